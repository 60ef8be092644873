"""Constants and helpers shared by the store's writer and reader (see :mod:`featcache.store`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError

FORMAT_VERSION = 1
CHUNK_BYTES = 16 * 2**20  # ~16 MiB chunks: big sequential writes, few files, cheap to mmap
NOT_IDENTITY = ("created_at", "splits")  # managed by the store itself
FP16_MAX = float(np.finfo(np.float16).max)


def sha256_ids(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def sha256_labels(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def store_path(cache_dir: str | os.PathLike, dataset: str, name: str) -> Path:
    """Where store ``name`` of ``dataset`` lives: ``<cache>/<dataset>/<name>.zarr`` (names made path-safe)."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._") or "_" for part in (dataset, name)]
    return Path(cache_dir) / safe[0] / f"{safe[1]}.zarr"


def chunk_rows_for(dim: int, dtype: str) -> int:
    """Rows per chunk so that a chunk of all ``dim`` columns is about CHUNK_BYTES."""
    rows = max(1, CHUNK_BYTES // (dim * np.dtype(dtype).itemsize))
    return rows - rows % 64 if rows >= 64 else rows


def identity_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two provenance dicts (store-managed keys ignored)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k in NOT_IDENTITY:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += identity_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync(Path(dirpath, name))
        fsync(Path(dirpath))


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_errors(store: Path) -> Iterator[None]:
    """Turn an OSError from the filesystem into a one-line StoreError that says how to go on."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        code = errno.errorcode.get(e.errno or 0, "")
        if e.errno in NO_SPACE:
            fix = "free space and rerun the same command to resume"
        else:
            fix = "check that --cache-dir is a writable directory, then rerun the same command to resume"
        raise StoreError(f"cannot write store {store}: {reason}{f' ({code})' if code else ''}; {fix}") from e


def remove_partials(store: Path) -> None:
    # Temp files of writes a kill interrupted: zarr's `<name>.<uuid>.partial` anywhere, our
    # `.<name>.<pid>.tmp` under _featcache. Only called under the lock, so no live writer owns them.
    for p in [*store.rglob("*.partial"), *(store / "_featcache").rglob(".*.tmp")]:
        p.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    # tmp + fsync + rename: a reader sees the old file or the whole new one, never a torn one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def check_version(path: Path, prov: dict) -> None:
    version = prov.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format version {version!r}; this featcache reads versions <= {FORMAT_VERSION}: "
            "upgrade featcache to read it"
        )


def rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            rmtree(child)
        path.rmdir()
    else:
        path.unlink()
