"""Probe results: the typed record every solver writes, the append-only JSONL log, and queries over it.

A :class:`ProbeRecord` is one ``featcache probe`` (or sweep step): what was probed (stores by checkpoint
hash and how their features were made, dataset, splits, views), how (preset, solver, hyperparameters), every grid
point's accuracy, the val-selected result and, for SGD, the research-style number; its :attr:`~ProbeRecord.key`
says which probes are the same experiment (:mod:`featcache.results_record`). Records are appended to the log
(``<cache>/results.jsonl``, ``--results``, ``FEATCACHE_RESULTS``) one line at a time under a lock, and read
line by line, a bad line skipped and named (:mod:`featcache.results_log`); sweeps claim a probe before running
it (:mod:`featcache.results_claims`). This module holds the queries of ``featcache results`` and the tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import ConfigError
from .results_claims import claim, claims_dir, holder
from .results_log import ResultsError, append_record, load_evaluations, load_records, resolve_log, results_path
from .results_record import (
    SCHEMA,
    BlockScore,
    EvaluationRecord,
    GridPoint,
    ProbeRecord,
    ResearchNumber,
    Selection,
    StoreUsed,
    ViewsUsed,
    probe_key,
    record_key,
)
from .tables import render

__all__ = [
    "SCHEMA",
    "StoreUsed",
    "GridPoint",
    "Selection",
    "ResearchNumber",
    "ViewsUsed",
    "ProbeRecord",
    "BlockScore",
    "EvaluationRecord",
    "ResultsError",
    "probe_key",
    "record_key",
    "results_path",
    "resolve_log",
    "append_record",
    "load_records",
    "load_evaluations",
    "claim",
    "claims_dir",
    "holder",
    "select_records",
    "summary_rows",
    "varying_columns",
    "SUMMARY_COLUMNS",
    "FIELDS",
    "format_probe",
    "format_evaluation",
    "format_record",
    "evaluation_rows",
    "records_frame",
]


# Field filters of `featcache results` and sweeps: exact values, never substrings.
FIELDS = {
    "dataset": lambda r: [r.dataset],
    "features": lambda r: [r.features],
    "tag": lambda r: r.tag.split(),
    "preset": lambda r: [r.preset],
    "solver": lambda r: [r.solver],
    "views": lambda r: [str(r.views.count)],
    "store": lambda r: [s.name for s in r.stores],
    "id": lambda r: [r.id],
}


def _short_floats(text: str) -> str:
    # json writes 1e-05; people type 1e-5: index both spellings
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", text)


def _tokens(record: ProbeRecord) -> set[str]:
    """The record's words, their ends trimmed, and the parts of names split at ``-``, ``/``, ``:`` and ``,``."""
    text = json.dumps(record.to_dict(), sort_keys=True, default=str).lower()
    words = set(re.findall(r"[a-z0-9_.+-]+", text + " " + _short_floats(text)))
    words |= {w.strip(".-_") for w in words}
    return words | {part for w in words for part in re.split(r"[-/:,]", w) if part}


def select_records(records: Iterable[ProbeRecord], patterns: Sequence[str] = (), **fields: Any) -> list[ProbeRecord]:
    """Records matching every field filter exactly and every pattern as a whole token, newest first.

    ``fields`` name keys of :data:`FIELDS` (``dataset="cifar10"`` never matches cifar100). A pattern matches
    a whole token of the record, case-insensitively; names are also split at ``-``, ``/``, ``:`` and ``,``,
    so ``step80k`` and ``run0`` match the store ``run0-step80k``, while ``80k`` and ``cifar`` match nothing.
    ``1e-5`` matches the weight decay json writes as ``1e-05``.

    Raises:
        ConfigError: an unknown field.
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown results field(s) {unknown}; known: {', '.join(FIELDS)}")
    wanted = {k: str(v) for k, v in fields.items() if v is not None}
    pats = [p.lower() for p in patterns]
    hits = []
    for r in records:
        if any(v not in FIELDS[k](r) for k, v in wanted.items()):
            continue
        if pats and not set(pats) <= _tokens(r):
            continue
        hits.append(r)
    return sorted(hits, key=lambda r: r.timestamp, reverse=True)


SUMMARY_COLUMNS = (
    "time",
    "tag",
    "dataset",
    "features",
    "stores",
    "preset",
    "solver",
    "views",
    "params",
    "epoch",
    "val_top1",
    "test_top1",
    "test_top5",
    "research_top1",
    "id",
)


def _params(p: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in p.items())


def summary_rows(records: Iterable[ProbeRecord]) -> list[dict]:
    """One flat row per record for tables and CSV (SUMMARY_COLUMNS)."""
    return [
        {
            "time": r.timestamp[:19],
            "tag": r.tag or None,
            "dataset": r.dataset,
            "features": r.features,
            "stores": ",".join(s.name for s in r.stores),
            "preset": r.preset,
            "solver": r.solver,
            "views": r.views.count,
            "params": _params(r.selected.params),
            "epoch": r.selected.epoch,
            "val_top1": r.selected.val_top1,
            "test_top1": r.selected.test_top1,
            "test_top5": r.selected.test_top5,
            "research_top1": r.research.test_top1 if r.research else None,
            "id": r.id,
        }
        for r in records
    ]


def varying_columns(rows: list[dict], always: Sequence[str], maybe: Sequence[str]) -> list[str]:
    """``always`` plus those of ``maybe`` whose values differ between rows (what tells two rows apart)."""
    return [c for c in SUMMARY_COLUMNS if c in always or (c in maybe and len({str(r.get(c)) for r in rows}) > 1)]


def records_frame(records: Iterable[ProbeRecord]):
    """The records as a pandas DataFrame of :func:`summary_rows` (pandas is optional)."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("records_frame needs pandas: pip install pandas (or use summary_rows for dicts)") from None
    return pd.DataFrame(summary_rows(records))


def format_probe(record: ProbeRecord, fmt: str = "table") -> str:
    """A probe's record for people (per-head table, selection, research number, timings) or as CSV/JSON."""
    heads = [
        {
            **{k: v for k, v in h.params.items()},
            "val_top1": h.val_top1,
            "val_epoch": h.val_epoch,
            "test_top1@val_epoch": h.test_top1,
            "test_top5@val_epoch": h.test_top5,
            "best_test_top1 (on test)": h.best_test_top1,
        }
        for h in record.heads
    ]
    if fmt == "json":
        return json.dumps(record.to_dict(), indent=1, default=str)
    if fmt in ("csv", "markdown"):
        return render(heads, fmt=fmt)
    sel, t = record.selected, record.timings
    stores = ", ".join(s.name for s in record.stores)
    rows = record.rows
    views = f"{record.views.count} augmented views (seed {record.views.seed})" if record.views.count else "centre crops"
    top5 = f"  top-5 {sel.test_top5:.2f}" if sel.test_top5 is not None else ""
    sub = record.train_subset
    low_shot = f" (its {sub.percent:g}% {sub.sampler} subset)" if sub else ""
    lines = [
        f"{record.dataset}: {record.features} of {stores} ({record.feature_dim} features), preset {record.preset}, "
        f"solver {record.solver}, trained on {views}",
        f"splits: fit {rows.get('fit')} + val {rows.get('val')} of '{record.train_split}'{low_shot}, "
        f"test {rows.get('test')} of '{record.test_split}'",
        render(heads),
        f"selected   {_params(sel.params)}" + (f" epoch {sel.epoch}" if sel.epoch else "")
        + f": val top-1 {sel.val_top1:.2f}  ->  TEST top-1 {sel.test_top1:.2f}{top5}",
        f"           ({sel.method})",
    ]  # fmt: skip
    if record.research is not None:
        res = record.research
        lines += [
            f"research   top-1 {res.test_top1:.2f} ({_params(res.params)}"
            + (f", epoch {res.epoch})" if res.epoch is not None else ")"),
            f"           ({res.note})",
        ]
    lines += [f"note       {n}" for n in record.notes]
    if t:
        lines.append(
            "timings    "
            + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items())
            + f" on {record.device} ({record.memory})"
        )
    return "\n".join(lines)


def evaluation_rows(records: Iterable[EvaluationRecord]) -> list[dict]:
    """One flat row per evaluation record, for tables and CSV."""
    return [
        {
            "time": r.timestamp[:19],
            "tag": r.tag or None,
            "dataset": r.dataset,
            "split": r.split,
            "features": r.features,
            "stores": ",".join(s.name for s in r.stores),
            "solver": r.solver,
            "classes": r.classes,
            "test_top1": r.top1,
            "test_top5": r.top5,
            "per_model_top1": " ".join(f"{b.top1:.2f}" for b in r.per_model) or None,
            "head": r.head_id,
            "id": r.id,
        }
        for r in records
    ]


def format_evaluation(record: EvaluationRecord, fmt: str = "table") -> str:
    """A saved head's evaluation for people (its score, each model's block alone) or as CSV/JSON."""
    if fmt == "json":
        return json.dumps(record.to_dict(), indent=1, default=str)
    if fmt in ("csv", "markdown"):
        return render(evaluation_rows([record]), fmt=fmt)
    top5 = f"  top-5 {record.top5:.2f}" if record.top5 is not None else ""
    stores = ", ".join(s.name for s in record.stores)
    lines = [
        f"{record.dataset} '{record.split}' ({record.rows} rows, {record.classes} classes, {record.class_map}): "
        f"{record.features} head of {stores}, trained on {record.head_dataset} (probe {record.head_id}, "
        f"solver {record.solver})",
        f"evaluated  top-1 {record.top1:.2f}{top5}",
    ]
    if record.per_model:
        lines.append("per model  (the head on one store's block of the features alone, the others zeroed after "
                     "normalisation)")  # fmt: skip
        blocks = [{"store": b.store, "top1": b.top1, "top5": b.top5} for b in record.per_model]
        lines.append(render(blocks))
    lines += [f"note       {n}" for n in record.notes]
    return "\n".join(lines)


def format_record(record: ProbeRecord | EvaluationRecord, fmt: str = "table") -> str:
    """:func:`format_probe` or :func:`format_evaluation`, by the record's kind."""
    return format_evaluation(record, fmt) if isinstance(record, EvaluationRecord) else format_probe(record, fmt)
