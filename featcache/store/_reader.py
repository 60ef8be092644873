"""Reading stores: memory-mapped rows, ids, labels, views, and verification (see :mod:`featcache.store`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr

from ..errors import StoreError, StoreIncompleteError
from ._format import (
    Layout,
    check_version,
    ensure_groups,
    group_doc,
    read_marker,
    sha256_ids,
    sha256_labels,
    write_json_atomic,
)
from ._lock import describe_lock
from ._schema import ChunkMarker, Provenance, SplitMeta, parse

__all__ = ["FeatureArray", "SplitReader", "Store", "open_store"]

# Chunk files an array keeps memory-mapped, least recently used dropped first: without a bound, a long probe
# maps every chunk it touched and its file-backed pages grow to the store's size. A few full chunks (16 MiB)
# per array; at most MAX_MAPS of tiny ones, far below the kernel's limit on mappings (vm.max_map_count).
MAPPED_BYTES = 128 * 2**20
MAX_MAPS = 64


class FeatureArray:
    """One (rows, dim) feature array of a split: the evaluation view (``view`` None) or augmented view ``view``.

    Rows are gathered from memory-mapped chunk files (uncompressed stores) or decoded by zarr.
    """

    def __init__(self, layout: Layout, split: str, meta: SplitMeta, view: int | None = None):
        self.layout, self.split, self.meta, self.view_index = layout, split, meta, view
        self.rows, self.dim = meta.rows, meta.dim
        self.dtype = np.dtype(meta.dtype).newbyteorder("<")
        self.chunk_rows, self.n_chunks = meta.chunk_rows, meta.n_chunks
        self.mmap = meta.compression == "none"
        chunk_bytes = max(1, self.chunk_rows * self.dim * self.dtype.itemsize)
        self.max_maps = max(2, min(MAX_MAPS, MAPPED_BYTES // chunk_bytes))
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._array = None

    @property
    def label(self) -> str:
        return "features" if self.view_index is None else f"view {self.view_index}"

    def chunk_file(self, i: int) -> Path:
        return self.layout.chunk_file(self.split, self.view_index, i)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.rows)

    def _chunk(self, i: int) -> np.ndarray:
        if i in self._chunks:
            self._chunks.move_to_end(i)
        else:
            if self.mmap:
                while len(self._chunks) >= self.max_maps:
                    self._chunks.popitem(last=False)  # unmapped once no copy-free view of it is left
                shape = (self.chunk_rows, self.dim)
                self._chunks[i] = np.memmap(self.chunk_file(i), dtype=self.dtype, mode="r", shape=shape)
            else:  # compressed: zarr decodes the whole chunk; keep only the latest one
                where = self.layout.array_dir(self.split, self.view_index)
                self._array = self._array or zarr.open_array(where, mode="r")
                self._chunks.clear()
                a, b = self.bounds(i)
                self._chunks[i] = self._array[a:b] if self.view_index is None else self._array[self.view_index, a:b]
        return self._chunks[i]

    def take(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows ``idx`` (any order, repeats allowed) into ``out`` (len(idx), dim)."""
        idx = np.asarray(idx, dtype=np.int64)
        if out is None:
            out = np.empty((len(idx), self.dim), dtype=self.dtype)
        chunk = idx // self.chunk_rows
        order = np.argsort(chunk, kind="stable")
        cuts = np.flatnonzero(np.diff(chunk[order])) + 1
        for group in np.split(order, cuts):
            if len(group):
                c = int(chunk[group[0]])
                out[group] = self._chunk(c)[idx[group] - c * self.chunk_rows]
        return out

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Contiguous rows [start, stop) as one array."""
        stop = self.rows if stop is None else stop
        return self.take(np.arange(start, stop))

    def marker(self, i: int) -> Path:
        return self.layout.marker(self.split, self.view_index, i)

    def markers(self) -> dict[int, ChunkMarker | None]:
        """Present markers by chunk index; an unreadable or malformed one maps to None."""
        out: dict[int, ChunkMarker | None] = {}
        for i in range(self.n_chunks):
            doc = read_marker(self.marker(i), self.layout.version)
            if doc is None:
                continue
            try:
                mark = parse(ChunkMarker, doc, str(self.marker(i)))
            except StoreError:
                mark = None
            a, b = self.bounds(i)
            out[i] = mark if mark is not None and mark.rows == b - a else None
        return out

    def written(self) -> int:
        """How many chunks carry a completion marker."""
        return sum(self.marker(i).exists() for i in range(self.n_chunks))

    def _file_ok(self, i: int) -> bool:
        f = self.chunk_file(i)
        want = self.chunk_rows * self.dim * self.dtype.itemsize
        return f.is_file() and (not self.mmap or f.stat().st_size == want)

    def _array_problems(self) -> list[str]:
        # the zarr view of the array must agree with the split metadata, or zarr readers see other rows
        doc_path = self.layout.array_dir(self.split, self.view_index) / "zarr.json"
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, ValueError):
            return [f"{doc_path} is missing or unreadable"]
        shape = doc.get("shape") or []
        chunks = doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        if self.view_index is None:
            ok = shape == [self.rows, self.dim] and chunks == [self.chunk_rows, self.dim]
        else:  # views may be allocated beyond the complete ones
            ok = len(shape) == 3 and shape[0] > self.view_index and shape[1:] == [self.rows, self.dim]
            ok = ok and chunks == [1, self.chunk_rows, self.dim]
        if ok and doc.get("data_type") == str(np.dtype(self.meta.dtype)):
            return []
        got = f"{doc.get('data_type')} {shape} in chunks {chunks}"
        return [f"{self.label} array is {got}, split metadata says {self.meta.dtype} ({self.rows}, {self.dim})"]

    def cheap_problems(self) -> list[str]:
        """Checks that read no feature bytes: layout, markers, chunk files of the right size."""
        problems = self._array_problems()
        if self.n_chunks != -(-self.rows // self.chunk_rows):
            problems.append(f"n_chunks {self.n_chunks} does not cover {self.rows} rows in chunks of {self.chunk_rows}")
        marks = self.markers()
        missing = [i for i in range(self.n_chunks) if i not in marks]
        if missing:
            problems.append(
                f"{self.label}: {len(missing)} of {self.n_chunks} chunks not written (first: {missing[:5]})"
            )
        for i, mark in marks.items():
            a, b = self.bounds(i)
            if mark is None:
                problems.append(f"marker {self.marker(i)} is malformed or not for {b - a} rows")
            if not self._file_ok(i):
                f = self.chunk_file(i)
                want = self.chunk_rows * self.dim * self.dtype.itemsize
                has = f"has {f.stat().st_size} bytes" if f.is_file() else "is missing"
                problems.append(f"chunk file {f} {has}, want {want} bytes")
        return problems

    def bad_chunks(self, content_only: bool = False) -> dict[int, str]:
        """Chunks that fail verification (missing, wrong size, checksum, NaN/Inf), with the reason.

        With ``content_only``, only checksum and NaN/Inf failures of chunks that pass :meth:`cheap_problems`
        (which reports the others).
        """
        bad: dict[int, str] = {}
        marks = self.markers()
        for i in range(self.n_chunks):
            mark = marks.get(i)
            a, b = self.bounds(i)
            if i not in marks:
                bad[i] = "not written"
            elif mark is None:
                bad[i] = f"marker {self.marker(i)} is malformed"
            elif not self._file_ok(i):
                bad[i] = f"chunk file {self.chunk_file(i)} is missing or of the wrong size"
            else:
                block = np.ascontiguousarray(self._chunk(i)[: b - a])
                why = []
                if hashlib.sha256(block.tobytes()).hexdigest() != mark.sha256:
                    why.append(f"chunk {i} ({self.chunk_file(i)}) does not match its checksum")
                if not np.isfinite(block).all():
                    why.append(f"chunk {i} holds NaN or Inf")
                if why:
                    bad[i] = "; ".join(why)
                self._chunks.pop(i, None)  # verification streams: do not keep every chunk mapped
                continue
            if content_only:
                del bad[i]
        return bad

    def skipped(self) -> list[int]:
        """Undecodable rows, as the chunk markers record them."""
        return sorted(int(r) for m in self.markers().values() if m is not None for r in m.skipped)


class SplitReader(FeatureArray):
    """One split of a store: ids, labels, the evaluation-view features, and its augmented views.

    Row access (``take``, ``read``) reads the evaluation view; :meth:`view` gives augmented view ``k``.
    """

    def __init__(self, layout: Layout, name: str, meta: SplitMeta):
        super().__init__(layout, name, meta)
        self.name, self.dir = name, layout.root / name
        self.complete = meta.complete

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(zarr.open_array(self.dir / "labels", mode="r")[:], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in zarr.open_array(self.dir / "ids", mode="r")[:].tolist()]

    @property
    def skipped_rows(self) -> np.ndarray:
        return np.asarray(self.meta.skipped_rows, dtype=np.int64)

    @property
    def n_views(self) -> int:
        """Complete augmented views."""
        return self.meta.n_views

    def view(self, k: int) -> FeatureArray:
        """Augmented view ``k`` (0 <= k < n_views).

        Raises:
            StoreError: the split has no complete view ``k``.
        """
        if not 0 <= k < self.n_views:
            raise StoreError(
                f"split '{self.name}' of store {self.layout.root} has {self.n_views} complete view(s), not view {k}; "
                f"extract them with `featcache extract --views {k + 1}`"
            )
        return FeatureArray(self.layout, self.name, self.meta, k)

    def arrays(self) -> list[FeatureArray]:
        """The evaluation view and every complete augmented view."""
        return [self, *(self.view(k) for k in range(self.n_views))]

    def deep_problems(self) -> list[str]:
        """Hash every chunk of every array, scan for NaN/Inf, check ids/labels hashes and skipped rows."""
        problems = []
        if self.complete and self.skipped() != sorted(self.meta.skipped_rows):
            problems.append("skipped_rows differ from those of the chunk markers")
        for array in self.arrays():
            problems += list(array.bad_chunks(content_only=True).values())
        for what, digest, want in (
            ("ids", lambda: sha256_ids(self.ids), self.meta.ids_sha256),
            ("labels", lambda: sha256_labels(self.labels), self.meta.labels_sha256),
        ):
            try:
                if digest() != want:
                    problems.append(f"{what} do not match {what}_sha256")
            except (OSError, ValueError) as e:
                problems.append(f"{what} unreadable ({type(e).__name__}: {e})")
        return problems

    def all_cheap_problems(self) -> list[str]:
        return [p for a in self.arrays() for p in a.cheap_problems()]


class Store:
    """A store opened read-only.

    Raises:
        StoreError: no store at ``path``, not a featcache store, or of a format version this featcache cannot read.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"no feature store at {self.path}; run `featcache extract` first or check the path")
        try:
            group = zarr.open_group(self.path, mode="r")
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.path} is not a readable zarr store ({type(e).__name__}: {e})") from None
        doc = group.attrs.get("featcache")
        if not isinstance(doc, dict):
            raise StoreError(f"{self.path} is a zarr group but not a featcache store")
        self.version = check_version(self.path, doc)
        self.provenance = parse(Provenance, doc, f"{self.path}: provenance")
        self.layout = Layout(self.path, self.version)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".zarr")

    @property
    def splits(self) -> list[str]:
        return list(self.provenance.splits)

    @property
    def locked(self) -> bool:
        return self.layout.lock.exists()

    def writer(self) -> str | None:
        """Who writes the store now (``pid P on host H (since T)``, a shard named), or None: no live lock."""
        for path in (self.layout.lock, *self.layout.shard_locks()):
            holder = describe_lock(path)
            if holder is not None and not holder["stale"]:
                shard = path.name.removeprefix("lock-")
                return holder["text"] if path == self.layout.lock else f"{shard}, {holder['text']}"
        return None

    def refuse_if_being_written(self) -> None:
        """Raise when a live writer holds the store: what a reader misses is on its way, not absent.

        Raises:
            StoreIncompleteError: names the writer and lists the splits written so far.
        """
        who = self.writer()
        if who is not None:
            raise StoreIncompleteError(
                f"store {self.path} is being written by {who} (splits so far: {', '.join(self.splits) or 'none'}); "
                "wait for it to finish"
            )

    def refuse_damaged(self) -> None:
        """Raise when the last ``featcache verify`` found the store damaged: no training on bad chunks.

        Raises:
            StoreError: names the store, the verdict's first problem and ``--repair``.
        """
        verdict = self.last_verdict()
        if verdict is not None and verdict.get("status", "ok" if verdict.get("ok") else "damaged") == "damaged":
            first = (verdict.get("problems") or ["?"])[0]
            raise StoreError(
                f"store {self.path} failed `featcache verify` at {verdict.get('at', '?')} ({first}); re-extract its "
                "damaged chunks with `featcache extract --repair` and the options that made it, then verify it again"
            )

    def split_meta(self, name: str) -> SplitMeta:
        """The split's metadata as written.

        Raises:
            StoreError: no such split (the present ones are listed), or it has no metadata.
        """
        if name not in self.splits:
            self.refuse_if_being_written()
            raise StoreError(f"store {self.path} has no split '{name}' (it has: {', '.join(self.splits) or 'none'})")
        try:
            doc = zarr.open_group(self.path / name, mode="r").attrs.get("featcache_split")
        except (FileNotFoundError, OSError, ValueError):
            doc = None
        if not isinstance(doc, dict) or not doc:
            raise StoreError(
                f"split '{name}' of store {self.path} is listed but has no metadata; "
                "rerun `featcache extract --overwrite` to write it again"
            )
        return parse(SplitMeta, doc, f"{self.path}/{name}: split metadata")

    def split(self, name: str, *, require_complete: bool = True) -> SplitReader:
        """Open split ``name``.

        Raises:
            StoreError: no such split (the present ones are listed).
            StoreIncompleteError: the split is not complete and ``require_complete``.
        """
        reader = SplitReader(self.layout, name, self.split_meta(name))
        if require_complete and not reader.complete:
            who = self.writer()
            if who is not None:
                raise StoreIncompleteError(
                    f"split '{name}' of store {self.path} is being written by {who} "
                    f"({reader.written()}/{reader.n_chunks} chunks so far); wait for it to finish"
                )
            raise StoreIncompleteError(
                f"split '{name}' of store {self.path} is not complete ({reader.written()}/{reader.n_chunks} "
                "chunks written); rerun the same `featcache extract` to finish it"
            )
        return reader

    def verify(self, deep: bool = True, record: bool = True) -> list[str]:
        """Every problem found, as ``'<split>: <problem>'``; empty when the store is sound.

        With ``record`` (and a writable store) the verdict is kept in the store, so ``ls`` can show a
        damaged store as damaged; a read-only store is verified all the same. The verdict's ``status`` is
        ``ok``, ``damaged``, or ``incomplete`` when a split is not marked complete (or none exists yet): an
        extraction still running or interrupted, which the next extract finishes and which clears the verdict.
        """
        problems, incomplete = [], not self.splits
        for name in self.splits:
            try:
                reader = self.split(name, require_complete=False)
            except StoreError as e:
                problems.append(str(e))
                continue
            found = reader.all_cheap_problems() + (reader.deep_problems() if deep else [])
            if not reader.complete:
                found.insert(0, "not marked complete")
                incomplete = True
            problems += [f"{name}: {p}" for p in dict.fromkeys(found)]
        if not self.splits:
            problems.append("store has no splits")
        if record and self.version >= 2:
            self._record_verdict(problems, deep, "incomplete" if incomplete else "damaged" if problems else "ok")
        return problems

    def _record_verdict(self, problems: list[str], deep: bool, status: str) -> None:
        verdict = {"featcache_verify": {"ok": not problems, "status": status, "deep": deep, "problems": problems[:20],
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}  # fmt: skip
        try:
            ensure_groups(self.path, self.layout.verdict().parent.parent)
            self.layout.verdict().parent.mkdir(exist_ok=True)
            write_json_atomic(self.layout.verdict(), group_doc(verdict))
        except OSError:
            pass  # a read-only cache: the verdict was printed, it just is not remembered

    def last_verdict(self) -> dict | None:
        """What the last ``verify`` found (``ok``, ``problems``, ``at``), or None if never verified."""
        try:
            doc = json.loads(self.layout.verdict().read_text())
            return doc["attributes"]["featcache_verify"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def open_store(path: str | os.PathLike) -> Store:
    """Open a store read-only (see :class:`Store`)."""
    return Store(Path(path))
