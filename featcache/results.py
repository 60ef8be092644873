"""Probe results: the typed record every solver writes, the append-only JSONL log, and queries over it.

A :class:`ProbeRecord` is one ``featcache probe`` (or sweep step): what was probed (stores by checkpoint
hash, dataset, splits, views), how (preset, solver, hyperparameters), every grid point's accuracy, the
val-selected result and, for SGD, the research-style number. Records are appended to the log
(``<cache>/results.jsonl``, ``--results``, ``FEATCACHE_RESULTS``) as single lines written with one
``write`` under an exclusive ``flock`` and fsynced, so concurrent probes never interleave. A line that does
not end in a newline (an older version killed mid-write, a full disk) is repaired before the next append,
and skipped on reading, so it never hides later records.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, FeatcacheError
from .records import Record, RecordError
from .tables import render

__all__ = [
    "StoreUsed",
    "GridPoint",
    "Selection",
    "ResearchNumber",
    "ViewsUsed",
    "ProbeRecord",
    "ResultsError",
    "results_path",
    "append_record",
    "load_records",
    "select_records",
    "summary_rows",
    "SUMMARY_COLUMNS",
    "FIELDS",
    "format_probe",
    "records_frame",
]

SCHEMA = 2  # 1: featcache 0.1's dicts (weight_decay keys, "splits" and "in_memory"), upgraded on reading


class ResultsError(FeatcacheError):
    """The results log cannot be written (disk full, read-only) or read."""


@dataclass(frozen=True)
class StoreUsed(Record):
    name: str
    path: str
    checkpoint: dict[str, Any]  # the store's CheckpointRef: name, arch, sha256, ...
    dim: int


@dataclass(frozen=True)
class GridPoint(Record):
    """One head of the grid (SGD: lr and weight decay; L-BFGS: strength; k-NN: k and temperature)."""

    params: dict[str, float]
    val_top1: float
    # test accuracy of this point's final fit at its val-selected epoch (SGD); for solvers that read test once,
    # only the selected point's
    test_top1: float | None = None
    val_epoch: int | None = None  # SGD: the epoch val selected for this point
    test_top5: float | None = None  # None with fewer than 6 classes
    best_test_top1: float | None = None  # SGD: best test accuracy over epochs (selected on test)
    extra: dict[str, Any] = field(default_factory=dict)  # solver details (iterations, ...)


@dataclass(frozen=True)
class Selection(Record):
    params: dict[str, float]
    val_top1: float
    test_top1: float
    method: str
    epoch: int | None = None
    test_top5: float | None = None


@dataclass(frozen=True)
class ResearchNumber(Record):
    """The seed's reported number: the best test accuracy over epochs and grid, i.e. selected on test."""

    test_top1: float
    params: dict[str, float]
    epoch: int | None
    note: str


@dataclass(frozen=True)
class ViewsUsed(Record):
    count: int  # augmented views the heads trained on; 0: centre-crop features
    seed: int | None = None
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeRecord(Record):
    id: str
    timestamp: str
    dataset: str
    features: str  # cat<k>
    stores: tuple[StoreUsed, ...]
    feature_dim: int
    train_split: str
    test_split: str
    rows: dict[str, int]  # fit, val, train, test
    preset: str
    solver: str
    hyperparameters: dict[str, Any]
    heads: tuple[GridPoint, ...]
    selected: Selection
    tag: str = ""
    transform: str | None = None
    precision: str | None = None
    views: ViewsUsed = field(default_factory=lambda: ViewsUsed(0))
    research: ResearchNumber | None = None
    notes: tuple[str, ...] = ()  # warnings the probe raised (classes missing from a split, ...)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""
    memory: str = ""  # resident | per-epoch | streamed
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def key(self) -> str:
        """What makes two probes the same experiment: stores (by checkpoint hash, in order), data and settings."""
        return probe_key(
            dataset=self.dataset,
            checkpoints=[s.checkpoint.get("sha256", s.name) for s in self.stores],
            train_split=self.train_split,
            test_split=self.test_split,
            preset=self.preset,
            solver=self.solver,
            hyperparameters=self.hyperparameters,
            views=self.views.count,
        )


def probe_key(**what: Any) -> str:
    """A stable hash of a probe's identity (see :attr:`ProbeRecord.key`); sweeps look results up by it."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def results_path(cache_dir: str | os.PathLike) -> Path:
    """The default log of a cache: ``<cache>/results.jsonl``."""
    return Path(cache_dir) / "results.jsonl"


def _log(where: str | os.PathLike) -> Path:
    p = Path(where)
    return p if p.suffix == ".jsonl" else results_path(p)


def append_record(where: str | os.PathLike, record: ProbeRecord) -> Path:
    """Append ``record`` as one line to the log at ``where`` (a ``.jsonl`` file, or a cache dir); create it if needed.

    Raises:
        ResultsError: the log cannot be written (the message says why and how to write it elsewhere).
    """
    path = _log(where)
    line = (json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # a torn last line (no newline) would glue onto this record: end it first
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "short write")
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)  # take back a partial line: the log stays whole
            raise _write_error(path, e) from None
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def _write_error(path: Path, e: OSError) -> ResultsError:
    return ResultsError(
        f"cannot append to the results log {path}: {e.strerror or e}; the record above was printed. Free space or "
        "pass --results PATH (or set FEATCACHE_RESULTS) to log elsewhere"
    )


def _upgrade(doc: dict) -> dict:
    """A schema-1 dict (featcache 0.1) in today's shape."""
    if doc.get("schema", 1) >= 2:
        return doc
    doc = dict(doc)

    def params(d: dict) -> dict:
        return {"weight_decay": d.get("weight_decay")} if "weight_decay" in d else dict(d.get("params", {}))

    doc["heads"] = [{**h, "params": params(h)} for h in doc.get("heads", [])]
    sel = doc.get("selected", {})
    doc["selected"] = {**sel, "params": params(sel), "method": sel.get("method", "")}
    if isinstance(doc.get("research"), dict):
        r = doc["research"]
        doc["research"] = {**r, "params": params(r), "epoch": r.get("epoch"), "note": r.get("note", "")}
    splits = doc.get("splits") or {}
    doc.setdefault("train_split", splits.get("train", "train"))
    doc.setdefault("test_split", splits.get("test", "test"))
    doc.setdefault("solver", "sgd")
    doc.setdefault("preset", "seed")
    doc.setdefault("hyperparameters", {})
    doc.setdefault("rows", {})
    doc.setdefault("feature_dim", sum(s.get("dim", 0) for s in doc.get("stores", [])))
    doc["stores"] = [{"path": "", "checkpoint": {}, "dim": 0, **s} for s in doc.get("stores", [])]
    if "in_memory" in doc:
        doc["memory"] = "resident" if doc["in_memory"] else "streamed"
    doc["schema"] = 1
    return doc


def load_records(where: str | os.PathLike) -> list[ProbeRecord]:
    """All records of the log at ``where`` (a ``.jsonl`` file or a cache dir), oldest first.

    A torn line (no JSON, a kill mid-write) is skipped wherever it is.

    Raises:
        ConfigError: a complete line is JSON but not a record (the file was edited by hand).
    """
    path = _log(where)
    if not path.exists():
        return []
    out = []
    try:
        text = path.read_text()
    except OSError as e:
        raise ResultsError(f"cannot read the results log {path}: {e.strerror or e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a crash or a full disk: the records around it still count
        try:
            out.append(ProbeRecord.from_dict(_upgrade(doc), f"{path}:{n}"))
        except (RecordError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}:{n} is not a results record ({e}); fix or delete that line") from None
    return out


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
    lines = [
        f"{record.dataset}: {record.features} of {stores} ({record.feature_dim} features), preset {record.preset}, "
        f"solver {record.solver}, trained on {views}",
        f"splits: fit {rows.get('fit')} + val {rows.get('val')} of '{record.train_split}', "
        f"test {rows.get('test')} of '{record.test_split}'",
        render(heads),
        f"selected   {_params(sel.params)}" + (f" epoch {sel.epoch}" if sel.epoch else "")
        + f": val top-1 {sel.val_top1:.2f}  ->  TEST top-1 {sel.test_top1:.2f}{top5}",
        f"           ({sel.method})",
    ]  # fmt: skip
    if record.research is not None:
        res = record.research
        lines += [
            f"research   top-1 {res.test_top1:.2f} ({_params(res.params)}, epoch {res.epoch})",
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
