"""The feature store: the one contract between ``extract`` and ``probe``. Format version 1.

A store holds one backbone's features of one dataset under one preprocessing. It is a zarr v3
group on a local (or shared) filesystem, ``<cache>/<dataset>/<name>.zarr``::

    zarr.json              group; attrs["featcache"] = provenance (below)
    <split>/               one group per split ("train", "test", "val", "all")
      zarr.json            attrs["featcache_split"] = split metadata (below)
      features/            (rows, dim) float16|float32, chunks (chunk_rows, dim), no compression by
                           default: codecs = [bytes(little)], so chunk file ``c/<i>/0`` is the raw
                           C-order block of rows [i*chunk_rows, (i+1)*chunk_rows), the last one
                           zero-padded to full size; it can be memory-mapped.
      labels/              int64 (rows,), written whole when the split is created
      ids/                 string (rows,), stable sample ids in dataset order, written whole
    _featcache/            bookkeeping, not part of the zarr hierarchy
      lock                 present while a writer holds the store (see featcache.lock)
      <split>/<i>.json     chunk i is written, fsynced and read back: {"rows", "sha256", "skipped"}

Provenance (``attrs["featcache"]``): ``format_version``, ``created_at``, ``software`` (featcache, torch,
torchvision, zarr, numpy, python versions), ``dataset`` {name, format}, ``checkpoint`` {name, arch,
sha256, path, ema}, ``layer``, ``feature_dim``, ``dtype``, ``precision``, ``transform`` (the preset's
parameters), ``preprocess`` {backend, device}, ``splits`` (names). Everything but ``created_at`` is the
store's *identity*: resuming with a different identity is refused.

Split metadata (``attrs["featcache_split"]``): ``rows``, ``dim``, ``dtype``, ``chunk_rows``, ``n_chunks``,
``compression``, ``fingerprint`` (of the dataset split), ``ids_sha256``, ``labels_sha256``, ``classes``,
``complete`` (false until every chunk is written and verified; set last, after an fsync of the data),
``completed_at``, ``skipped_rows`` (rows whose image could not be decoded; their features are zeros
and readers drop them).

Writers only ever write whole chunks, and each chunk has its own marker, so several processes
may each own disjoint chunk ranges of one split. Readers need numpy and zarr only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError, StoreIncompleteError, StoreMismatchError
from .lock import StoreLock

__all__ = [
    "FORMAT_VERSION",
    "CHUNK_BYTES",
    "SplitData",
    "StoreWriter",
    "SplitWriter",
    "Store",
    "SplitReader",
    "open_store",
    "identity_diff",
    "sha256_ids",
    "sha256_labels",
    "chunk_rows_for",
    "store_path",
]

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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    # tmp + fsync + rename: a reader sees the old file or the whole new one, never a torn one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _check_version(path: Path, prov: dict) -> None:
    version = prov.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format version {version!r}; this featcache reads versions <= {FORMAT_VERSION}: "
            "upgrade featcache to read it"
        )


@dataclass(frozen=True)
class SplitData:
    """What a writer knows about a split before any feature is computed."""

    name: str
    ids: Sequence[str]
    labels: np.ndarray
    fingerprint: str
    classes: Sequence[str]


class StoreWriter:
    """Creates a store, or reopens an incomplete one to resume it; holds the store's lock.

    Args:
        path: the ``.zarr`` directory.
        provenance: the store's identity (see module docstring); ``format_version`` and
            ``created_at`` are filled in.
        overwrite: delete an existing store (after taking its lock) and start over.

    Raises:
        StoreLockedError: another live process writes this store.
        StoreMismatchError: the store exists with another identity (lists the differing keys).
        StoreError: the store exists but is not a featcache store, or is of a newer format.
    """

    def __init__(self, path: Path, provenance: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.prov = {**provenance, "format_version": FORMAT_VERSION}
        self.lock = StoreLock(self.path / "_featcache" / "lock", f"store {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        meta = self.path / "zarr.json"
        if meta.exists() and overwrite:
            for child in self.path.iterdir():
                if child.name != "_featcache":
                    _rmtree(child)
            for child in (self.path / "_featcache").iterdir():
                if child.name != "lock":
                    _rmtree(child)
        if (self.path / "zarr.json").exists():
            self.group = zarr.open_group(self.path, mode="r+")
            old = self.group.attrs.get("featcache")
            if not isinstance(old, dict):
                raise StoreError(f"{self.path} exists but is not a featcache store; pick another --store-name")
            _check_version(self.path, old)
            diff = identity_diff(old, self.prov)
            if diff:
                raise StoreMismatchError(
                    f"store {self.path} exists with different {', '.join(diff)}; pass --store-name to write a "
                    "new store, or --overwrite to replace it"
                )
            self.prov = old
        else:
            self.prov["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self.group = zarr.create_group(self.path, attributes={"featcache": self.prov})
        _fsync(self.path)

    def split(
        self, data: SplitData, dim: int, dtype: str, *, chunk_rows: int | None = None, compression: str = "none"
    ) -> SplitWriter:
        """Create the split (writing ids and labels whole) or reopen it for resuming.

        ``chunk_rows`` (default: about CHUNK_BYTES per chunk) applies to a new split only.
        """
        return SplitWriter(self, data, dim, dtype, chunk_rows or chunk_rows_for(dim, dtype), compression)

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _rmtree(child)
        path.rmdir()
    else:
        path.unlink()


class SplitWriter:
    """Writes whole feature chunks of one split; ``finalize`` marks it complete."""

    def __init__(self, store: StoreWriter, data: SplitData, dim: int, dtype: str, chunk_rows: int, compression: str):
        self.store, self.name = store, data.name
        self.dir = store.path / data.name
        self.marks = store.path / "_featcache" / data.name
        self.marks.mkdir(parents=True, exist_ok=True)
        rows = len(data.ids)
        meta = {
            "rows": rows,
            "dim": int(dim),
            "dtype": str(np.dtype(dtype)),
            "chunk_rows": int(chunk_rows),
            "n_chunks": -(-rows // chunk_rows),
            "compression": compression,
            "fingerprint": data.fingerprint,
            "ids_sha256": sha256_ids(data.ids),
            "labels_sha256": sha256_labels(data.labels),
            "classes": list(data.classes),
            "complete": False,
            "completed_at": None,
            "skipped_rows": [],
        }
        if (self.dir / "zarr.json").exists():
            group = zarr.open_group(self.dir, mode="r+")
            old = dict(group.attrs.get("featcache_split") or {})
            # chunk_rows is layout, not identity: a reopened split keeps the one it was started with
            layout = ("chunk_rows", "n_chunks", "complete", "completed_at", "skipped_rows")
            diff = [k for k in meta if k not in layout and old.get(k) != meta[k]]
            if diff:
                raise StoreMismatchError(
                    f"split '{self.name}' of store {store.path} was started with different {', '.join(diff)}; "
                    "pass --overwrite to start over"
                )
            self.meta = old
            self._clean_partials()
        else:
            group = store.group.create_group(data.name, attributes={"featcache_split": meta})
            compressors = None if compression == "none" else [zarr.codecs.ZstdCodec(level=3)]
            group.create_array(
                "features",
                shape=(rows, dim),
                chunks=(chunk_rows, dim),
                dtype=dtype,
                compressors=compressors,
                fill_value=0,
                config={"write_empty_chunks": True},
            )
            group.create_array("labels", data=np.asarray(data.labels, dtype="<i8"), chunks=(max(rows, 1),))
            ids = group.create_array("ids", shape=(rows,), dtype=str, chunks=(max(rows, 1),))
            ids[:] = np.asarray(list(data.ids), dtype=str)
            splits = list(store.prov.get("splits", []))
            if data.name not in splits:
                store.prov["splits"] = splits + [data.name]
                store.group.attrs["featcache"] = store.prov
            self.meta = meta
        self.group = group
        self.features = group["features"]
        self.rows, self.chunk_rows, self.n_chunks = rows, int(self.meta["chunk_rows"]), int(self.meta["n_chunks"])

    def _clean_partials(self) -> None:
        # zarr writes each chunk to `<key>.<uuid>.partial` and renames it; a kill leaves the temp file
        for p in list(self.dir.rglob("*.partial")) + list(self.marks.glob(".*.tmp")):
            p.unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.rows)

    def chunk_file(self, i: int) -> Path:
        return self.dir / "features" / "c" / str(i) / "0"

    def done(self, i: int) -> bool:
        return (self.marks / f"{i}.json").exists()

    def pending(self) -> list[int]:
        """Chunks that still have to be written (all of them for a fresh split)."""
        return [] if self.complete else [i for i in range(self.n_chunks) if not self.done(i)]

    def write_chunk(self, i: int, block: np.ndarray, skipped: Sequence[int] = ()) -> None:
        """Write chunk ``i`` whole, fsync it, read it back, then mark it done.

        Args:
            block: (rows of chunk i, dim) features, any float dtype; cast to the store dtype.
            skipped: absolute row indices in this chunk whose image could not be read.

        Raises:
            StoreError: wrong shape, NaN/Inf, or values that overflow float16; OSError from the disk.
        """
        start, stop = self.bounds(i)
        if block.shape != (stop - start, self.meta["dim"]):
            raise StoreError(
                f"chunk {i} of {self.dir}: got shape {block.shape}, want {(stop - start, self.meta['dim'])}"
            )
        if not np.isfinite(block).all():
            raise StoreError(f"features of rows {start}-{stop} of {self.dir} contain NaN or Inf; check the checkpoint")
        dtype = np.dtype(self.meta["dtype"])
        if dtype == np.float16 and block.size and np.abs(block).max() > FP16_MAX:
            raise StoreError(
                f"features of rows {start}-{stop} reach {np.abs(block).max():.4g}, beyond float16's "
                f"{FP16_MAX:.0f}; rerun with --dtype float32 --overwrite"
            )
        block = np.ascontiguousarray(block, dtype=dtype.newbyteorder("<"))
        self.features[start:stop] = block
        digest = hashlib.sha256(block.tobytes()).hexdigest()
        if self.meta["compression"] == "none":
            path = self.chunk_file(i)
            _fsync(path)
            back = np.fromfile(path, dtype=block.dtype, count=block.size)
            if hashlib.sha256(back.tobytes()).hexdigest() != digest:
                raise StoreError(f"chunk {i} of {self.dir} read back differently from what was written; check the disk")
        _write_json_atomic(
            self.marks / f"{i}.json",
            {"rows": stop - start, "sha256": digest, "skipped": sorted(int(r) for r in skipped)},
        )

    def finalize(self) -> None:
        """Mark the split complete once every chunk has its marker and its file has the right size.

        Raises:
            StoreIncompleteError: some chunks are not written yet (their indices are listed).
        """
        missing = [i for i in range(self.n_chunks) if not self.done(i)]
        if missing:
            raise StoreIncompleteError(f"split '{self.name}' of {self.store.path} misses chunks {missing[:10]}")
        skipped: list[int] = []
        for i in range(self.n_chunks):
            skipped += json.loads((self.marks / f"{i}.json").read_text())["skipped"]
        problems = SplitReader(self.store.path, self.name, self.meta).cheap_problems()
        if problems:
            raise StoreError(f"split '{self.name}' of {self.store.path}: {problems[0]}")
        self.meta.update(complete=True, completed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), skipped_rows=skipped)
        # the flag goes last: zarr renames zarr.json into place; fsync it and its directory
        self.group.attrs["featcache_split"] = self.meta
        _fsync(self.dir / "zarr.json")
        _fsync(self.dir)


class SplitReader:
    """Read-only access to one split: ids, labels, and rows gathered from memory-mapped chunks."""

    def __init__(self, store_path: Path, name: str, meta: dict):
        self.store_path, self.name, self.meta = Path(store_path), name, meta
        self.dir = self.store_path / name
        self.rows, self.dim = int(meta["rows"]), int(meta["dim"])
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        self.chunk_rows, self.n_chunks = int(meta["chunk_rows"]), int(meta["n_chunks"])
        self.complete = bool(meta.get("complete"))
        self.mmap = meta.get("compression") == "none"
        self._chunks: dict[int, np.ndarray] = {}
        self._array = None

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(zarr.open_array(self.dir / "labels", mode="r")[:], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in zarr.open_array(self.dir / "ids", mode="r")[:].tolist()]

    @property
    def skipped_rows(self) -> np.ndarray:
        return np.asarray(self.meta.get("skipped_rows") or [], dtype=np.int64)

    def chunk_file(self, i: int) -> Path:
        return self.dir / "features" / "c" / str(i) / "0"

    def _chunk(self, i: int) -> np.ndarray:
        if i not in self._chunks:
            if self.mmap:
                shape = (self.chunk_rows, self.dim)
                self._chunks[i] = np.memmap(self.chunk_file(i), dtype=self.dtype, mode="r", shape=shape)
            else:  # compressed or remote: zarr decodes the whole chunk; keep only the latest one
                self._array = self._array or zarr.open_array(self.dir / "features", mode="r")
                self._chunks.clear()
                start = i * self.chunk_rows
                self._chunks[i] = self._array[start : min(start + self.chunk_rows, self.rows)]
        return self._chunks[i]

    def take(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows ``idx`` (any order, repeats allowed) into ``out`` (len(idx), dim)."""
        idx = np.asarray(idx, dtype=np.int64)
        if out is None:
            out = np.empty((len(idx), self.dim), dtype=self.dtype)
        chunk = idx // self.chunk_rows
        order = np.argsort(chunk, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk[order])) + 1
        for group in np.split(order, bounds):
            if len(group):
                c = int(chunk[group[0]])
                out[group] = self._chunk(c)[idx[group] - c * self.chunk_rows]
        return out

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Contiguous rows [start, stop) as one array."""
        stop = self.rows if stop is None else stop
        return self.take(np.arange(start, stop))

    def _marker(self, i: int) -> Path:
        return self.store_path / "_featcache" / self.name / f"{i}.json"

    def written(self) -> int:
        """How many chunks carry a completion marker."""
        return sum(self._marker(i).exists() for i in range(self.n_chunks))

    def cheap_problems(self) -> list[str]:
        """Structure checks that read no feature bytes: markers present, chunk files of the right size."""
        problems = []
        missing = [i for i in range(self.n_chunks) if not self._marker(i).exists()]
        if missing:
            problems.append(f"{len(missing)} of {self.n_chunks} chunks not written (first: {missing[:5]})")
        if self.mmap:
            want = self.chunk_rows * self.dim * self.dtype.itemsize
            for i in range(self.n_chunks):
                f = self.chunk_file(i)
                size = f.stat().st_size if f.exists() else None
                if i not in missing and size != want:
                    problems.append(f"chunk file {f} has {size} bytes, want {want}")
        return problems

    def deep_problems(self) -> list[str]:
        """Hash every chunk against its marker, scan for NaN/Inf, check ids/labels hashes."""
        problems = []
        for i in range(self.n_chunks):
            mark = self._marker(i)
            if not mark.exists() or (self.mmap and not self.chunk_file(i).exists()):
                continue  # reported by cheap_problems
            start = i * self.chunk_rows
            block = np.ascontiguousarray(self._chunk(i)[: min(self.chunk_rows, self.rows - start)])
            if hashlib.sha256(block.tobytes()).hexdigest() != json.loads(mark.read_text())["sha256"]:
                problems.append(f"chunk {i} ({self.chunk_file(i)}) does not match its checksum")
            if not np.isfinite(block).all():
                problems.append(f"chunk {i} holds NaN or Inf")
        if sha256_ids(self.ids) != self.meta.get("ids_sha256"):
            problems.append("ids do not match ids_sha256")
        if sha256_labels(self.labels) != self.meta.get("labels_sha256"):
            problems.append("labels do not match labels_sha256")
        return problems


class Store:
    """A store opened read-only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"no feature store at {self.path}; run `featcache extract` first or check the path")
        self.group = zarr.open_group(self.path, mode="r")
        prov = self.group.attrs.get("featcache")
        if not isinstance(prov, dict):
            raise StoreError(f"{self.path} is a zarr group but not a featcache store")
        _check_version(self.path, prov)
        self.provenance: dict = prov

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".zarr")

    @property
    def splits(self) -> list[str]:
        return list(self.provenance.get("splits", []))

    @property
    def locked(self) -> bool:
        return (self.path / "_featcache" / "lock").exists()

    def split(self, name: str, *, require_complete: bool = True) -> SplitReader:
        """Open split ``name``.

        Raises:
            StoreError: no such split (the present ones are listed).
            StoreIncompleteError: the split is not complete and ``require_complete``.
        """
        if name not in self.splits:
            raise StoreError(f"store {self.path} has no split '{name}' (it has: {', '.join(self.splits) or 'none'})")
        meta = dict(zarr.open_group(self.path / name, mode="r").attrs.get("featcache_split") or {})
        reader = SplitReader(self.path, name, meta)
        if require_complete and not reader.complete:
            raise StoreIncompleteError(
                f"split '{name}' of store {self.path} is not complete ({reader.written()}/{reader.n_chunks} "
                "chunks written); rerun the same `featcache extract` to finish it"
            )
        return reader

    def verify(self, deep: bool = True) -> list[str]:
        """Every problem found, as ``'<split>: <problem>'``; empty when the store is sound."""
        problems = []
        for name in self.splits:
            try:
                reader = self.split(name, require_complete=False)
            except StoreError as e:
                problems.append(str(e))
                continue
            found = reader.cheap_problems() + (reader.deep_problems() if deep else [])
            if not reader.complete:
                found.insert(0, "not marked complete")
            problems += [f"{name}: {p}" for p in found]
        if not self.splits:
            problems.append("store has no splits")
        return problems


def open_store(path: str | os.PathLike) -> Store:
    """Open a store read-only (see :class:`Store`)."""
    return Store(Path(path))


def list_stores(cache_dir: str | os.PathLike, dataset: str | None = None) -> list[dict]:
    """One summary dict per store under ``cache_dir`` (optionally one dataset's), for ``featcache ls``."""
    root = Path(cache_dir)
    pattern = f"{store_path(root, dataset, 'x').parent.name}/*.zarr" if dataset else "*/*.zarr"
    out = []
    for path in sorted(root.glob(pattern)):
        row: dict[str, Any] = {"dataset": path.parent.name, "store": path.stem}
        try:
            store = Store(path)
        except StoreError as e:
            out.append({**row, "status": f"unreadable: {e}"})
            continue
        prov = store.provenance
        states, rows = [], []
        for name in store.splits:
            r = store.split(name, require_complete=False)
            states.append(f"{name}:{'complete' if r.complete else f'{r.written()}/{r.n_chunks} chunks'}")
            rows.append(f"{name}:{r.rows}")
        row.update(
            status=" ".join(states) + (" (locked)" if store.locked else ""),
            rows=" ".join(rows),
            dim=prov.get("feature_dim"),
            dtype=prov.get("dtype"),
            precision=prov.get("precision"),
            checkpoint=prov.get("checkpoint", {}).get("name"),
            arch=prov.get("checkpoint", {}).get("arch"),
            transform=prov.get("transform", {}).get("name"),
            preprocess=prov.get("preprocess", {}).get("backend"),
        )
        out.append(row)
    return out
