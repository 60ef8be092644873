"""Render lists of records as an aligned text table, CSV or JSON (one renderer for every command)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["render", "FORMATS"]

FORMATS = ("table", "markdown", "csv", "json")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    return str(value)


def render(rows: Sequence[dict], columns: Sequence[str] | None = None, fmt: str = "table") -> str:
    """Format ``rows`` (dicts) with ``columns`` (default: keys of the first row, in order).

    ``table`` right-aligns numbers; ``markdown`` is a GitHub table; ``csv`` and ``json`` keep full precision
    for loading elsewhere.
    """
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue().rstrip("\n")
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if fmt == "markdown":
        numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]
        rule = ["---:" if num else "---" for num in numeric]
        return "\n".join("| " + " | ".join(v.replace("|", "\\|") for v in row) + " |"
                         for row in [list(columns), rule, *cells])  # fmt: skip
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [line(columns), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    return "\n".join(s.rstrip() for s in out)
