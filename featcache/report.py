"""``featcache report``: a sweep's paper-style table (markdown, CSV) and plot (PNG), read from the results log.

The table has one row per sweep row (cat1, cat2, ...): models per draw, steps per model, total steps, and two
numbers per dataset, each as mean ± std over the row's draws, the best mean of each column marked: the test top-1
selected on val (``<dataset>``), and the research number (``<dataset> research``: what the paper's scripts report,
the best test top-1 over epochs and grid, selected on test; for k-NN the fixed k DINO reports). The ``fidelity``
column says which profile the row's numbers came from (:mod:`featcache.fidelity`). A cell's
result is the record of exactly the key each probe of the sweep has now (:func:`featcache.sweep.plan_sweep`), so
a result of another configuration (other epochs, checkpoints, views, preprocessing) never stands in, whatever its
tag. A probe whose stores are missing here (or stale) has no key yet: its cell stays empty and the footnote says
how many such probes there are. The plot shows accuracy against the number of concatenated models at the fixed
budget, per dataset a solid line (circles) for the val-selected number and a dashed one (triangles) for the research
number, the spread as error bars. It needs matplotlib (``pip install 'featcache[plot]'``);
without it the tables are written all the same.

With per-model evaluations in the log (a sweep's ``per_model: true``, or ``featcache evaluate --per-model`` on its
heads), a ``<dataset> per-model`` column follows the dataset's: the same heads scored on one model's block of the
features alone (the research ``cat_validate_network``), the mean over the models, then mean ± std over draws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .results import ProbeRecord
from .sweep import RowInfo, SweepPlan
from .tables import render

__all__ = [
    "Cell",
    "SweepReport",
    "ReportFiles",
    "Series",
    "build_report",
    "write_report",
    "plot_report",
    "plot_series",
    "LEGEND",
    "PLOT_HINT",
]

PLOT_HINT = "the plot needs matplotlib: pip install 'featcache[plot]'"
LEGEND = (
    "Per dataset, DATASET: test top-1 (%) selected on val (head, epoch and grid point chosen on a val split of "
    "train, test read once); DATASET research: the paper scripts' number, the best test top-1 over epochs and grid "
    "(selected on test; k-NN: at a fixed k, DINO's 20-NN; L-BFGS has none); each mean ± std (ddof=1) over the "
    "draws, the best mean of each column marked; fidelity: strict = PIL preprocessing, fp32 forward, float32 "
    "stores (the research pipeline), fast = the defaults."
)


def _mean(values: tuple[float, ...]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: tuple[float, ...]) -> float | None:
    """Sample standard deviation (ddof=1) over the draws; None with fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


@dataclass(frozen=True)
class Cell:
    """The test top-1 of one (row, dataset): one value per draw found, in draw order, of ``draws`` planned.

    ``research``: the research numbers of those draws whose record has one; ``fidelity``: each found draw's
    (strict or fast).
    """

    values: tuple[float, ...]
    draws: int
    research: tuple[float, ...] = ()
    fidelity: tuple[str, ...] = ()

    @property
    def mean(self) -> float | None:
        return _mean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1) over the draws; None with fewer than two."""
        return _std(self.values)

    @property
    def research_mean(self) -> float | None:
        return _mean(self.research)

    @property
    def research_std(self) -> float | None:
        return _std(self.research)


@dataclass(frozen=True)
class SweepReport:
    """Everything the table and the plot show."""

    name: str
    description: str
    rows: tuple[RowInfo, ...]
    datasets: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]  # (row, dataset)
    settings: dict[str, str]  # dataset -> how it was probed (preset, views, epochs)
    unknown: int = 0  # probes whose stores are missing or stale here: their results cannot be looked up
    per_model: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (row, dataset): mean block accuracy

    def per_model_datasets(self) -> list[str]:
        """The datasets with a per-model column: those with a per-model evaluation of some cell's heads."""
        return [d for d in self.datasets if any(c.values for (_, ds), c in self.per_model.items() if ds == d)]

    def best(self, dataset: str, research: bool = False) -> set[str]:
        """The rows with the highest mean in the dataset's column, or its research column (several on a tie; none
        without results)."""
        cells = {r.name: self.cells[(r.name, dataset)] for r in self.rows}
        means = {r: c.research_mean if research else c.mean for r, c in cells.items()}
        top = max((m for m in means.values() if m is not None), default=None)
        return {r for r, m in means.items() if m is not None and m == top}

    def table_rows(self, mark: str = "**{}**") -> list[dict]:
        """Rows for people: ``mean ± std`` strings, ``(n/N)`` when draws are missing, the best wrapped in ``mark``;
        per dataset the val-selected column ``<dataset>`` and the research column ``<dataset> research``, then the
        row's ``fidelity``."""
        out = []
        for r in self.rows:
            row = {"features": r.name, "models": r.models, "steps per model": _steps(r.steps_per_model),
                   "total steps": _steps(r.total_steps)}  # fmt: skip
            fidelity: set[str] = set()
            for d in self.datasets:
                cell = self.cells[(r.name, d)]
                for key, values, research in ((d, cell.values, False), (f"{d} research", cell.research, True)):
                    text = _text(values, cell.draws)
                    row[key] = mark.format(text) if r.name in self.best(d, research) else text
                if d in self.per_model_datasets():
                    pm = self.per_model[(r.name, d)]
                    row[f"{d} per-model"] = _text(pm.values, pm.draws)
                fidelity |= set(cell.fidelity)
            row["fidelity"] = ", ".join(sorted(fidelity)) or "-"
            out.append(row)
        return out

    def csv_rows(self) -> list[dict]:
        """Rows for loading elsewhere: numbers at full precision, ``<dataset>_best`` true on the marked cells,
        ``<dataset>_research_*`` the research column's, ``<dataset>_fidelity`` the profiles its numbers came from."""
        out = []
        for r in self.rows:
            row = {"features": r.name, "models": r.models, "steps_per_model": r.steps_per_model,
                   "total_steps": r.total_steps}  # fmt: skip
            for d in self.datasets:
                cell = self.cells[(r.name, d)]
                row |= {f"{d}_mean": cell.mean, f"{d}_std": cell.std, f"{d}_n": len(cell.values),
                        f"{d}_best": r.name in self.best(d)}  # fmt: skip
                row |= {f"{d}_research_mean": cell.research_mean, f"{d}_research_std": cell.research_std,
                        f"{d}_research_n": len(cell.research), f"{d}_research_best": r.name in self.best(d, True),
                        f"{d}_fidelity": ",".join(sorted(set(cell.fidelity))) or None}  # fmt: skip
                if d in self.per_model_datasets():
                    pm = self.per_model[(r.name, d)]
                    row |= {f"{d}_per_model_mean": pm.mean, f"{d}_per_model_std": pm.std,
                            f"{d}_per_model_n": len(pm.values)}  # fmt: skip
            out.append(row)
        return out

    def footnote(self) -> str:
        found = sum(len(c.values) for c in self.cells.values())
        planned = sum(c.draws for c in self.cells.values())
        how = "; ".join(f"{d}: {s}" for d, s in self.settings.items())
        unknown = (
            f" {self.unknown} probe(s) have no ready stores here, so their results cannot be looked up (left out): "
            f"run `featcache sweep {self.name}` to extract them."
            if self.unknown
            else ""
        )
        per_model = (
            " DATASET per-model: the same heads on one model's block of the features alone (the others zeroed after "
            "the head's normalisation, as the research cat_validate_network), the mean over the models."
            if self.per_model_datasets()
            else ""
        )
        return f"{LEGEND}{per_model}\n{found}/{planned} results found.{unknown} {how}."


def _text(values: tuple[float, ...], draws: int) -> str:
    """``mean ± std`` of a column's values, ``(n/N)`` when draws are missing, ``-`` without any."""
    mean, std = _mean(values), _std(values)
    text = "-" if mean is None else f"{mean:.2f}"
    if std is not None:
        text += f" ± {std:.2f}"
    if values and len(values) < draws:
        text += f" ({len(values)}/{draws})"
    return text


def _steps(n: int | None) -> str:
    if n is None:
        return "-"
    for size, unit in ((10**6, "M"), (10**3, "k")):
        if n >= size and n % (size // 100) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def build_report(plan: SweepPlan) -> SweepReport:
    """The report of a sweep as its results log stands (see :func:`featcache.sweep.plan_sweep`)."""
    datasets = tuple(d.name for d in plan.sweep.datasets)
    found: dict[tuple[str, str], list[ProbeRecord]] = {(r.name, d): [] for r in plan.rows for d in datasets}
    per_model: dict[tuple[str, str], list[float]] = {k: [] for k in found}
    blocks = {(e.head_key, e.dataset, e.split): e for e in plan.evaluations if e.per_model}  # the newest wins
    settings = {}
    for job in plan.probes:
        rec = plan.record(job)  # exactly this probe's key: never a record of the same tag with other settings
        if rec is not None:
            found[(job.row, job.dataset)].append(rec)
            ev = blocks.get((rec.key, rec.dataset, rec.test_split))  # its head's, on its own test split
            if ev is not None:
                per_model[(job.row, job.dataset)].append(float(np.mean([b.top1 for b in ev.per_model])))
        c = job.config
        settings[job.dataset] = f"preset {c.preset}, {c.views} view(s), {c.heads.epochs} epochs"
    draws = {r.name: r.draws for r in plan.rows}
    cells = {
        k: Cell(
            tuple(r.selected.test_top1 for r in recs),
            draws[k[0]],
            tuple(r.research.test_top1 for r in recs if r.research is not None),
            tuple(_fidelity(r) for r in recs),
        )  # fmt: skip
        for k, recs in found.items()
    }
    unknown = sum(job.key is None for job in plan.probes)
    blocks_cells = {k: Cell(tuple(v), draws[k[0]]) for k, v in per_model.items()}
    return SweepReport(plan.sweep.name, plan.sweep.description, plan.rows, datasets, cells, settings, unknown,
                       blocks_cells)  # fmt: skip


def _fidelity(record: ProbeRecord) -> str:
    """strict when every store the probe read was (records of schema 3 and older: fast, as their keys say)."""
    strict = record.stores and all(s.fidelity == "strict" for s in record.stores)
    return "strict" if strict else "fast"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went; ``plot`` is None when matplotlib is missing (``note`` says how to get it)."""

    markdown: Path
    csv: Path
    plot: Path | None
    note: str | None = None


def _write(path: Path, data: str | bytes) -> None:
    # a temp file renamed over the target: a reader never sees half a table
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


@dataclass(frozen=True)
class Series:
    """One line of the plot: a dataset's val-selected or research numbers against the models concatenated."""

    label: str
    marker: str
    linestyle: str
    colour: str
    x: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]  # 0 where one draw gives no spread


def plot_series(report: SweepReport) -> list[Series]:
    """Per dataset, its val-selected numbers (circles, solid) and its research numbers (triangles, dashed), in one
    colour; rows without a number are left out, a column without any gives no line."""
    out = []
    for k, d in enumerate(report.datasets):
        for research, marker, style, label in ((False, "o", "-", d), (True, "^", "--", f"{d} research")):
            cells = [(r.models, report.cells[(r.name, d)]) for r in report.rows]
            pts = [(x, c.research_mean, c.research_std) if research else (x, c.mean, c.std) for x, c in cells]
            pts = [(x, m, s or 0.0) for x, m, s in pts if m is not None]
            if pts:
                x, mean, std = (tuple(v) for v in zip(*pts, strict=True))
                out.append(Series(label, marker, style, f"C{k % 10}", x, mean, std))
    return out


def plot_report(report: SweepReport, path: Path) -> Path:
    """Accuracy against the number of concatenated models: the lines of :func:`plot_series`, std as error bars.

    Raises:
        ImportError: matplotlib is not installed (see :data:`PLOT_HINT`).
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switched

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    for line in plot_series(report):
        ax.errorbar(line.x, line.mean, yerr=line.std, marker=line.marker, linestyle=line.linestyle,
                    color=line.colour, capsize=4, label=line.label)  # fmt: skip
    ticks = {r.models: f"{r.name}\n{r.models} x {_steps(r.steps_per_model)}" for r in report.rows}
    ax.set_xticks(list(ticks), list(ticks.values()))
    total = {r.total_steps for r in report.rows if r.total_steps}
    budget = f" (budget {', '.join(_steps(t) for t in sorted(total))} steps)" if total else ""
    ax.set_xlabel(f"models concatenated, each trained 1/k of the budget{budget}")
    ax.set_ylabel("linear-probe test top-1 (%)")
    ax.set_title(f"sweep {report.name}: mean ± std over draws; dashed: research (best test, selected on test)",
                 fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a line per dataset with results
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def write_report(report: SweepReport, out_dir: Path) -> ReportFiles:
    """Write ``<out_dir>/<sweep>.md``, ``.csv`` and (with matplotlib) ``.png``.

    Raises:
        ConfigError: ``out_dir`` cannot be written (the message names it and why).
    """
    base = out_dir / report.name
    head = f"# Sweep {report.name}\n\n" + (f"{report.description}\n\n" if report.description else "")
    md = head + render(report.table_rows(), fmt="markdown") + "\n\n" + report.footnote().replace("\n", "\n\n") + "\n"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(base.with_suffix(".md"), md)
        _write(base.with_suffix(".csv"), render(report.csv_rows(), fmt="csv") + "\n")
        try:
            plot = plot_report(report, base.with_suffix(".png"))
        except ImportError:
            return ReportFiles(base.with_suffix(".md"), base.with_suffix(".csv"), None, PLOT_HINT)
    except OSError as e:
        raise ConfigError(f"cannot write the report to {out_dir}: {e.strerror or e}; pass --out with a writable "
                          "directory") from None  # fmt: skip
    return ReportFiles(base.with_suffix(".md"), base.with_suffix(".csv"), plot)
