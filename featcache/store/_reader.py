"""Reading stores: memory-mapped rows, ids, labels, and verification (see :mod:`featcache.store`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError, StoreIncompleteError
from ._format import check_version, sha256_ids, sha256_labels, store_path


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

    def _markers(self) -> dict[int, dict]:
        """Present markers by chunk index; an unreadable one maps to {} (and is reported as malformed)."""
        out = {}
        for i in range(self.n_chunks):
            try:
                out[i] = json.loads(self._marker(i).read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                out[i] = {}
        return out

    def _file_ok(self, i: int) -> bool:
        f = self.chunk_file(i)
        want = self.chunk_rows * self.dim * self.dtype.itemsize
        return f.is_file() and (not self.mmap or f.stat().st_size == want)

    def _array_problems(self) -> list[str]:
        # the zarr view of the features must agree with the split metadata, or zarr readers see other rows
        try:
            doc = json.loads((self.dir / "features" / "zarr.json").read_text())
        except (OSError, ValueError):
            return [f"{self.dir / 'features' / 'zarr.json'} is missing or unreadable"]
        got = (
            doc.get("data_type"),
            doc.get("shape"),
            doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape"),
        )
        want = (str(np.dtype(self.meta["dtype"])), [self.rows, self.dim], [self.chunk_rows, self.dim])
        return [] if got == want else [f"features array is {got}, split metadata says {want}"]

    def cheap_problems(self) -> list[str]:
        """Checks that read no feature bytes: layout, markers, chunk files of the right size."""
        problems = self._array_problems()
        if self.n_chunks != -(-self.rows // self.chunk_rows):
            problems.append(f"n_chunks {self.n_chunks} does not cover {self.rows} rows in chunks of {self.chunk_rows}")
        marks = self._markers()
        missing = [i for i in range(self.n_chunks) if i not in marks]
        if missing:
            problems.append(f"{len(missing)} of {self.n_chunks} chunks not written (first: {missing[:5]})")
        for i, mark in marks.items():
            rows = min(self.chunk_rows, self.rows - i * self.chunk_rows)
            if mark.get("rows") != rows or "sha256" not in mark:
                problems.append(f"marker {self._marker(i)} is malformed or not for {rows} rows")
            if not self._file_ok(i):
                f = self.chunk_file(i)
                want = self.chunk_rows * self.dim * self.dtype.itemsize
                has = f"has {f.stat().st_size} bytes" if f.is_file() else "is missing"
                problems.append(f"chunk file {f} {has}, want {want} bytes")
        return problems

    def deep_problems(self) -> list[str]:
        """Hash every chunk against its marker, scan for NaN/Inf, check ids/labels hashes and skipped rows."""
        problems = []
        marks = self._markers()
        skipped = sorted(int(r) for m in marks.values() for r in m.get("skipped", []))
        if self.complete and skipped != sorted(self.meta.get("skipped_rows") or []):
            problems.append("skipped_rows differ from those of the chunk markers")
        for i, mark in marks.items():
            if not self._file_ok(i):
                continue  # reported by cheap_problems
            start = i * self.chunk_rows
            block = np.ascontiguousarray(self._chunk(i)[: min(self.chunk_rows, self.rows - start)])
            if hashlib.sha256(block.tobytes()).hexdigest() != mark.get("sha256"):
                problems.append(f"chunk {i} ({self.chunk_file(i)}) does not match its checksum")
            if not np.isfinite(block).all():
                problems.append(f"chunk {i} holds NaN or Inf")
        for what, digest in (("ids", lambda: sha256_ids(self.ids)), ("labels", lambda: sha256_labels(self.labels))):
            try:
                if digest() != self.meta.get(f"{what}_sha256"):
                    problems.append(f"{what} do not match {what}_sha256")
            except (OSError, ValueError) as e:
                problems.append(f"{what} unreadable ({type(e).__name__}: {e})")
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
        check_version(self.path, prov)
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
        try:
            meta = dict(zarr.open_group(self.path / name, mode="r").attrs.get("featcache_split") or {})
        except FileNotFoundError:
            meta = {}
        if not meta:
            raise StoreError(
                f"split '{name}' of store {self.path} is listed but has no metadata; "
                "rerun `featcache extract --overwrite` to write it again"
            )
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
