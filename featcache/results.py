"""The results log: one JSON line per probe in ``<cache>/results.jsonl``, and queries over it.

Records are appended under an exclusive ``flock`` with a single write, so concurrent probes on one
machine never interleave lines. ``featcache results`` filters them like grepping experiment logs:
every pattern must occur somewhere in a record (``inat 1e-5 cat 80k``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import ConfigError
from .tables import render

__all__ = [
    "results_path",
    "append_record",
    "load_records",
    "filter_records",
    "summary_rows",
    "SUMMARY_COLUMNS",
    "format_probe",
]

SUMMARY_COLUMNS = (
    "time",
    "tag",
    "dataset",
    "features",
    "stores",
    "wd",
    "epoch",
    "val_top1",
    "test_top1",
    "test_top5",
    "research_top1",
    "id",
)


def results_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / "results.jsonl"


def append_record(cache_dir: str | os.PathLike, record: dict) -> Path:
    """Append ``record`` as one line; create the log if needed. Returns the log's path."""
    path = results_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return path


def load_records(cache_dir: str | os.PathLike) -> list[dict]:
    """All records, oldest first. A torn last line (a crash mid-write) is skipped.

    Raises:
        ConfigError: a line other than the last is not JSON (the file was edited by hand).
    """
    path = results_path(cache_dir)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            raise ConfigError(f"{path}:{n} is not a JSON record; fix or delete that line") from None
    return out


def _short_floats(text: str) -> str:
    # json writes 1e-05; people type 1e-5: index both spellings
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", text)


def _haystack(record: dict) -> str:
    text = json.dumps(record, sort_keys=True, default=str).lower()
    return text + " " + _short_floats(text)


def filter_records(records: Iterable[dict], patterns: Sequence[str]) -> list[dict]:
    """Records in which every pattern occurs (case-insensitive), newest first."""
    pats = [p.lower() for p in patterns]
    hits = [r for r in records if all(p in _haystack(r) for p in pats)]
    return sorted(hits, key=lambda r: r.get("timestamp", ""), reverse=True)


def summary_rows(records: Iterable[dict]) -> list[dict]:
    """One flat row per record for tables and CSV (SUMMARY_COLUMNS)."""
    rows = []
    for r in records:
        sel, research = r.get("selected", {}), r.get("research", {})
        rows.append(
            {
                "time": r.get("timestamp", "")[:19],
                "tag": r.get("tag") or None,
                "dataset": r.get("dataset"),
                "features": r.get("features"),
                "stores": ",".join(s["name"] for s in r.get("stores", [])),
                "wd": sel.get("weight_decay"),
                "epoch": sel.get("epoch"),
                "val_top1": sel.get("val_top1"),
                "test_top1": sel.get("test_top1"),
                "test_top5": sel.get("test_top5"),
                "research_top1": research.get("test_top1"),
                "id": r.get("id"),
            }
        )
    return rows


def format_probe(record: dict, fmt: str = "table") -> str:
    """A probe's record for people (per-head table, selection, research number, timings) or as CSV/JSON."""
    heads = [
        {
            "weight_decay": h["weight_decay"],
            "val_top1": h["val_top1"],
            "val_epoch": h["val_epoch"],
            "test_top1@val_epoch": h["test_top1"],
            "test_top5@val_epoch": h["test_top5"],
            "best_test_top1 (on test)": h["best_test_top1"],
        }
        for h in record["heads"]
    ]
    if fmt == "json":
        return json.dumps(record, indent=1, default=str)
    if fmt == "csv":
        return render(heads, fmt="csv")
    sel, res, t = record["selected"], record["research"], record["timings"]
    stores = ", ".join(s["name"] for s in record["stores"])
    rows = record["rows"]
    return "\n".join(
        [
            f"{record['dataset']}: {record['features']} of {stores} ({record['feature_dim']} features), "
            f"train {rows['fit']} + val {rows['val']}, test {rows['test']}",
            render(heads),
            f"selected   wd={sel['weight_decay']:g} epoch {sel['epoch']}: val top-1 {sel['val_top1']:.2f}  ->  "
            f"TEST top-1 {sel['test_top1']:.2f}  top-5 {sel['test_top5']:.2f}",
            f"           ({sel['method']})",
            f"research   top-1 {res['test_top1']:.2f} (wd={res['weight_decay']:g}, epoch {res['epoch']})",
            f"           ({res['note']})",
            f"timings    load {t['load_s']:.1f}s, select pass {t['select_s']:.1f}s, final pass {t['final_s']:.1f}s, "
            f"total {t['total_s']:.1f}s on {record['device']} ({'in memory' if record['in_memory'] else 'streamed'})",
        ]
    )
