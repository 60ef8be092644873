"""Constants and helpers shared by the store's writer and reader (see :mod:`featcache.store`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.chunk_key_encodings import parse_chunk_key_encoding

from ..errors import FeatcacheError, StoreError
from ..locations import RemotePath, location, remote_errors, zarr_store

FORMAT_VERSION = 2
READABLE = (1, 2)  # v1: no views, plain JSON chunk markers; read-only for this version
CHUNK_BYTES = 16 * 2**20  # ~16 MiB chunks: big sequential writes, few files, cheap to mmap
FP16_MAX = float(np.finfo(np.float16).max)
# Every array is created with this chunk key encoding (zarr v3's default, given explicitly): readers memory-map
# the chunk files at the paths it names, so the layout must not hang on a library default.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "/"}
CHUNK_KEYS = parse_chunk_key_encoding(CHUNK_KEY_ENCODING)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def sha256_ids(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def sha256_labels(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def store_path(cache_dir: str | os.PathLike | RemotePath, dataset: str, name: str) -> Path | RemotePath:
    """Where store ``name`` of ``dataset`` lives: ``<cache>/<dataset>/<name>.zarr`` (names made path-safe); the cache
    may be an object-store URL (see :mod:`featcache.locations`)."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._") or "_" for part in (dataset, name)]
    return location(cache_dir, "--cache-dir") / safe[0] / f"{safe[1]}.zarr"


def chunk_rows_for(dim: int, dtype: str, rows: int | None = None) -> int:
    """Rows per chunk so that a chunk of all ``dim`` columns is about CHUNK_BYTES, at most ``rows``.

    Capped at the split's row count: a tiny split must not pay for a mostly padded 16 MiB chunk.
    """
    n = max(1, CHUNK_BYTES // (dim * np.dtype(dtype).itemsize))
    n = n - n % 64 if n >= 64 else n
    return n if rows is None else max(1, min(n, rows))


class Layout:
    """Where every file of a store lives, for its format version (see :mod:`featcache.store`).

    ``view`` None is the evaluation-view ``features`` array; an int is that augmented view of ``views``.
    """

    def __init__(self, root: Path | RemotePath, version: int = FORMAT_VERSION):
        self.root, self.version = location(root), version
        self.books = self.root / "_featcache"
        self.lock = self.books / "lock"

    def array_dir(self, split: str, view: int | None) -> Path:
        return self.root / split / ("features" if view is None else "views")

    def chunk_file(self, split: str, view: int | None, i: int) -> Path:
        """Chunk ``i`` of the features (``c/<i>/0``) or of view ``view`` (``c/<view>/<i>/0``): whole rows."""
        coords = (i, 0) if view is None else (view, i, 0)
        return self.array_dir(split, view) / CHUNK_KEYS.encode_chunk_key(coords)

    def marker_dir(self, split: str, view: int | None) -> Path:
        if self.version == 1:
            return self.books / split
        return self.books / split / ("features" if view is None else f"views/{view}")

    def marker(self, split: str, view: int | None, i: int) -> Path:
        if self.version == 1:
            return self.books / split / f"{i}.json"
        return self.marker_dir(split, view) / str(i) / "zarr.json"

    def verdict(self) -> Path:
        return self.books / "verify" / "zarr.json"

    def shard_lock(self, index: int, count: int) -> Path:
        """The lock of shard ``index`` of ``count`` (``extract --shard``, torch.distributed ranks)."""
        return self.books / f"lock-shard-{index}-of-{count}"

    def shard_locks(self) -> list[Path]:
        """Every shard lock file present (held, or left by a dead shard)."""
        return sorted(p for p in self.books.glob("lock-shard-*") if re.fullmatch(r"lock-shard-\d+-of-\d+", p.name))


# Bookkeeping lives inside the store as zarr groups whose attributes hold it, so that plain zarr (and xarray)
# list a store without "not recognized" warnings.
def group_doc(attributes: dict | None = None) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}, "consolidated_metadata": None}


def ensure_groups(root: Path, path: Path) -> None:
    """Give ``path`` and each of its parents below ``root`` a group ``zarr.json`` (created once)."""
    rel = path.relative_to(root)
    for k in range(1, len(rel.parts) + 1):
        node = root.joinpath(*rel.parts[:k])
        node.mkdir(exist_ok=True)
        if not (node / "zarr.json").exists():
            write_json_atomic(node / "zarr.json", group_doc())


def read_marker(path: Path, version: int) -> dict | None:
    """A chunk marker's fields, None if absent; ``{}`` if unreadable (reported as malformed)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return marker_fields(raw, version)


def marker_fields(raw: str | bytes, version: int) -> dict:
    """A chunk marker's fields from its bytes; ``{}`` if they are not a marker (reported as malformed)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    if version == 1:
        return doc if isinstance(doc, dict) else {}
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    found = attrs.get("featcache_chunk") if isinstance(attrs, dict) else None
    return found if isinstance(found, dict) else {}


def fsync(path: Path | RemotePath) -> None:
    if isinstance(path, RemotePath):
        return  # an acknowledged PUT is durable: there is nothing to flush
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path | RemotePath) -> None:
    if isinstance(root, RemotePath):
        return
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync(Path(dirpath, name))
        fsync(Path(dirpath))


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_errors(store: Path) -> Iterator[None]:
    """Turn an OSError from the filesystem into a one-line StoreError that says how to go on (an object store's
    errors that a user must act on are one line already: see :func:`featcache.locations.remote_errors`)."""
    try:
        if isinstance(store, RemotePath):
            with remote_errors(store):
                yield
        else:
            yield
    except FeatcacheError:
        raise
    except OSError as e:
        reason = e.strerror or str(e)
        code = errno.errorcode.get(e.errno or 0, "")
        if e.errno in NO_SPACE:
            fix = "free space and rerun the same command to resume"
        else:
            fix = "check that --cache-dir is a writable directory, then rerun the same command to resume"
        raise StoreError(f"cannot write store {store}: {reason}{f' ({code})' if code else ''}; {fix}") from e


def remove_partials(store: Path | RemotePath) -> None:
    if isinstance(store, RemotePath):
        return  # every object is one whole PUT: a killed write leaves nothing behind
    # Temp files of writes a kill interrupted: zarr's `<name>.<uuid>.partial` anywhere, our
    # `.<name>.<pid>.tmp` anywhere. Only called under the store's lock with no other live shard, so no live
    # writer owns them.
    for p in [*store.rglob("*.partial"), *store.rglob(".*.tmp")]:
        p.unlink(missing_ok=True)


def write_json_atomic(path: Path | RemotePath, obj: Any) -> None:
    # tmp + fsync + rename: a reader sees the old file or the whole new one, never a torn one
    if isinstance(path, RemotePath):
        path.write_bytes(json.dumps(obj).encode())  # one PUT: the object store's tmp + rename
        return
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


def read_chunk_bytes(path: Path | RemotePath, dtype: np.dtype, count: int) -> np.ndarray:
    """The first ``count`` items of a raw chunk file or object (a read-back or a verification, never a map)."""
    if isinstance(path, RemotePath):
        return np.frombuffer(path.read_bytes(), dtype=dtype, count=count)
    return np.fromfile(path, dtype=dtype, count=count)


def open_group(path: Path | RemotePath, **kwargs: Any) -> zarr.Group:
    """``zarr.open_group`` of a local directory (as before) or of an object-store prefix."""
    return zarr.open_group(zarr_store(path), **kwargs)


def open_array(path: Path | RemotePath, **kwargs: Any) -> zarr.Array:
    """``zarr.open_array`` of a local directory (as before) or of an object-store prefix."""
    return zarr.open_array(zarr_store(path), **kwargs)


def check_version(path: Path, prov: dict) -> int:
    """The store's format version; refuse one this featcache cannot read."""
    version = prov.get("format_version")
    if version not in READABLE:
        raise StoreError(
            f"store {path} has format version {version!r}; this featcache reads versions <= {FORMAT_VERSION}: "
            "upgrade featcache to read it"
        )
    return version


def rmtree(path: Path | RemotePath) -> None:
    """Remove a file, a symlink (not what it points to) or a directory tree (whose symlinks are not followed)."""
    if isinstance(path, RemotePath):
        path.rmtree()
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
