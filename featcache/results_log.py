"""The append-only JSONL results log: one record per line, appended under a lock, read line by line.

A line is a probe's :class:`ProbeRecord`, or a saved head's :class:`EvaluationRecord` (``"kind": "evaluation"``):
:func:`load_records` reads the first, :func:`load_evaluations` the second.

Records are appended as single lines written with one ``write`` under an exclusive ``flock`` and fsynced, so
concurrent probes never interleave. On object storage (``--results s3://bucket/results``) the log is a prefix holding
one object per record, ``<UTC time>-<host>-<pid>-<random>.json``, each created by one conditional PUT and never
rewritten, so appends from many machines need no lock and no read-modify-write of a shared object; reading lists the
prefix and fetches every record in parallel, oldest first. A line that does not end in a newline (an older version
killed mid-write, a full disk) is repaired before the next append. Reading never fails on one bad line: a torn line,
damaged bytes or a JSON line that is not a record is skipped and named in a warning, so it never hides the other
records.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from .errors import FeatcacheError
from .locations import RemoteError, RemotePath, location
from .records import RecordError
from .results_record import SCHEMA, EvaluationRecord, ProbeRecord

__all__ = ["ResultsError", "results_path", "resolve_log", "append_record", "load_records", "load_evaluations"]

log = logging.getLogger(__name__)

_SHOW = 10  # skipped lines named in the warning before "... (N in all)"


class ResultsError(FeatcacheError):
    """The results log cannot be written (disk full, read-only) or read."""


def results_path(cache_dir: str | os.PathLike) -> Path:
    """The default log of a cache: ``<cache>/results.jsonl``."""
    return Path(cache_dir) / "results.jsonl"


def resolve_log(where: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """The log at ``where``: a ``.jsonl`` file itself, an object-store URL the prefix of a remote log, anything else
    a cache dir holding ``results.jsonl``."""
    p = location(where, "--results")
    if isinstance(p, RemotePath):
        return p
    return p if p.suffix == ".jsonl" else results_path(p)


def append_record(where: str | os.PathLike | RemotePath, record: ProbeRecord | EvaluationRecord) -> Path | RemotePath:
    """Append ``record`` (a probe's or an evaluation's) as one line to the log at ``where`` (a ``.jsonl`` file, or
    a cache dir); create it if needed.

    Raises:
        ResultsError: the log cannot be written (the message says why and how to write it elsewhere).
    """
    path = resolve_log(where)
    line = (json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n").encode()
    if isinstance(path, RemotePath):
        return _append_remote(path, line)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise write_error(path, e) from None
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
            raise write_error(path, e) from None
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def _append_remote(prefix: RemotePath, line: bytes) -> RemotePath:
    _refuse_object(prefix)
    # One new object per record: a name no other writer makes (time, host, pid, random), created only if absent.
    t = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}"
    obj = prefix / f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    try:
        obj.create_bytes(line)
    except OSError as e:
        raise write_error(obj, e) from None
    return obj


def _read_remote(prefix: RemotePath) -> list[tuple[str, bytes]]:
    """(object name, bytes) of every record object under ``prefix``, oldest first (names start with the time)."""
    try:
        names = [k for k in prefix.find() if k.endswith(".json") and "/" not in k]
        if not names:
            _refuse_object(prefix)
        blobs = prefix.fs.cat([(prefix / k).key for k in names], on_error="return") if names else {}
    except (RemoteError, ResultsError):
        raise  # one line already, naming the URL
    except OSError as e:
        raise ResultsError(f"cannot read the results log {prefix}: {e.strerror or e}") from None
    out = []
    for k in names:
        blob = blobs.get((prefix / k).key)
        if isinstance(blob, FileNotFoundError):
            continue
        out.append((k, b"" if isinstance(blob, BaseException) else blob))
    return out


def _refuse_object(prefix: RemotePath) -> None:
    """A remote log is a prefix; one object there (a ``results.jsonl`` uploaded) would otherwise read as no records
    and have records written below its name."""
    if prefix.is_file():
        raise ResultsError(
            f"--results {prefix} is an object, not a prefix: a results log on object storage is a prefix holding one "
            f"object per record; name a prefix (e.g. {prefix.with_name(prefix.stem + '-log')}), or copy the file to a "
            "local path to read it there"
        )


def write_error(path: Path | RemotePath, e: OSError) -> ResultsError:
    """The error for a log (or its claims) that cannot be written: why, and how to log elsewhere."""
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


def _read(path: Path) -> bytes:
    # a shared lock: a line being appended is read whole or not at all
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            return f.read()
    except OSError as e:
        raise ResultsError(f"cannot read the results log {path}: {e.strerror or e}") from None


def _parse(raw: bytes, where: str) -> tuple[ProbeRecord | EvaluationRecord | None, str]:
    """(the record on a line, or None; why it was skipped, or a note for a record of a newer schema)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 (damaged bytes)"
    except json.JSONDecodeError:
        return None, "not JSON: torn by a crash or a full disk, or damaged"
    if not isinstance(doc, dict):
        return None, f"JSON but not a results record (a {type(doc).__name__})"
    schema = doc.get("schema", 1)
    newer = isinstance(schema, int) and schema > SCHEMA
    try:
        if doc.get("kind") == "evaluation":
            record = EvaluationRecord.from_dict(doc, where)
        else:
            record = ProbeRecord.from_dict(_upgrade(doc), where)
    except (RecordError, TypeError, AttributeError, ValueError) as e:
        if newer:
            return None, f"a record of a newer featcache (schema {schema}) that this one cannot read: upgrade featcache"
        return None, f"JSON but not a results record ({str(e).removeprefix(where + ': ')})"
    if not newer:
        return record, ""
    note = f"written by a newer featcache (record schema {schema}; this one reads {SCHEMA}): new fields left out"
    return dataclasses.replace(record, notes=(*record.notes, note)), note


def load_records(where: str | os.PathLike | RemotePath) -> list[ProbeRecord]:
    """All probe records of the log at ``where`` (a ``.jsonl`` file or a cache dir), oldest first; [] without a log.

    A line that is not a record (torn by a kill, damaged bytes, JSON edited by hand) is skipped and named in a
    warning; a record of a newer schema is listed with a note (in its ``notes``, and a warning).

    Raises:
        ResultsError: the log exists but cannot be read.
    """
    return [r for r in _load(where) if isinstance(r, ProbeRecord)]


def load_evaluations(where: str | os.PathLike | RemotePath) -> list[EvaluationRecord]:
    """All evaluation records of the log at ``where``, oldest first, read as :func:`load_records` reads.

    Raises:
        ResultsError: the log exists but cannot be read.
    """
    return [r for r in _load(where) if isinstance(r, EvaluationRecord)]


def _load(where: str | os.PathLike | RemotePath) -> list[ProbeRecord | EvaluationRecord]:
    path = resolve_log(where)
    if isinstance(path, RemotePath):
        entries = _read_remote(path)  # one record an object, named instead of numbered
    elif not path.exists():
        return []
    else:
        entries = list(enumerate(_read(path).split(b"\n"), 1))
    out, skipped, newer = [], [], []
    for n, raw in entries:
        if not raw.strip():
            if isinstance(path, RemotePath):
                skipped.append(f"{n} (empty or unreadable)")
            continue
        record, why = _parse(raw, f"{path}:{n}" if not isinstance(path, RemotePath) else f"{path}/{n}")
        if record is None:
            skipped.append(f"{n} ({why})")
            continue
        if why:
            newer.append(str(n))
        out.append(record)
    if skipped:
        more = f" ... ({len(skipped)} in all)" if len(skipped) > _SHOW else ""
        log.warning("results log %s: skipped line(s) %s%s; the other records are read", path,
                    ", ".join(skipped[:_SHOW]), more)  # fmt: skip
    if newer:
        log.warning("results log %s: line(s) %s were written by a newer featcache; listed with what this version "
                    "knows of them (see their notes)", path, ", ".join(newer[:_SHOW]))  # fmt: skip
    return out
