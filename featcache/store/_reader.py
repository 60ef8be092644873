"""Reading stores: memory-mapped rows, ids, labels and views (see :mod:`featcache.store`); checks in ``_verify``."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError, StoreError, StoreIncompleteError
from ..locations import RemotePath, location
from ._format import Layout, check_version, open_array, open_group, read_marker
from ._lock import describe_lock
from ._remote_read import RemoteReads
from ._schema import ChunkMarker, Provenance, SplitMeta, parse
from ._verify import ArrayChecks, SplitChecks, StoreChecks

__all__ = ["FeatureArray", "SplitReader", "Store", "open_store"]

# Chunk files an array keeps memory-mapped, least recently used dropped first: without a bound, a long probe
# maps every chunk it touched and its file-backed pages grow to the store's size. A few full chunks (16 MiB)
# per array; at most MAX_MAPS of tiny ones, far below the kernel's limit on mappings (vm.max_map_count).
MAPPED_BYTES = 128 * 2**20
MAX_MAPS = 64


class FeatureArray(RemoteReads, ArrayChecks):
    """One (rows, dim) feature array of a split: the evaluation view (``view`` None) or augmented view ``view``.

    Rows are gathered from memory-mapped chunk files (uncompressed stores), from byte ranges of chunk objects
    fetched in parallel (uncompressed stores on object storage, see :mod:`featcache.store._remote_read`), or decoded
    by zarr.
    """

    def __init__(self, layout: Layout, split: str, meta: SplitMeta, view: int | None = None):
        self.layout, self.split, self.meta, self.view_index = layout, split, meta, view
        self.rows, self.dim = meta.rows, meta.dim
        self.dtype = np.dtype(meta.dtype).newbyteorder("<")
        self.chunk_rows, self.n_chunks = meta.chunk_rows, meta.n_chunks
        self.mmap = meta.compression == "none"
        chunk_bytes = max(1, self.chunk_rows * self.dim * self.dtype.itemsize)
        self.max_maps = max(2, min(MAX_MAPS, MAPPED_BYTES // chunk_bytes))
        self.remote = isinstance(layout.root, RemotePath)
        self.parallel_reads = self.remote and self.mmap  # reads gain from concurrency (see feed_stream.BlockStream)
        if self.remote:  # whole chunks fetched (verify, sync) are anonymous memory: keep the fewest
            self.max_maps = 2
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._array = None

    @property
    def label(self) -> str:
        return "features" if self.view_index is None else f"view {self.view_index}"

    def chunk_file(self, i: int) -> Path | RemotePath:
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
                if self.remote:
                    self._chunks[i] = self.fetch_chunk(i).reshape(shape)
                else:
                    self._chunks[i] = np.memmap(self.chunk_file(i), dtype=self.dtype, mode="r", shape=shape)
            else:  # compressed: zarr decodes the whole chunk; keep only the latest one
                where = self.layout.array_dir(self.split, self.view_index)
                self._array = self._array or open_array(where, mode="r")
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
        if self.remote and self.mmap:  # byte ranges of the chunk objects, fetched in parallel
            return self.take_remote(idx, chunk, np.split(order, cuts), out)
        for group in np.split(order, cuts):
            if len(group):
                c = int(chunk[group[0]])
                out[group] = self._chunk(c)[idx[group] - c * self.chunk_rows]
        return out

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Contiguous rows [start, stop) as one array."""
        stop = self.rows if stop is None else stop
        return self.take(np.arange(start, stop))

    def marker(self, i: int) -> Path | RemotePath:
        return self.layout.marker(self.split, self.view_index, i)

    def markers(self) -> dict[int, ChunkMarker | None]:
        """Present markers by chunk index; an unreadable or malformed one maps to None."""
        out: dict[int, ChunkMarker | None] = {}
        docs = self.remote_markers() if self.remote else None  # one listing and parallel GETs, not n round trips
        for i in range(self.n_chunks):
            doc = docs.get(i) if docs is not None else read_marker(self.marker(i), self.layout.version)
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
        if self.remote:
            return len(self.remote_markers())
        return sum(self.marker(i).exists() for i in range(self.n_chunks))

    def skipped(self) -> list[int]:
        """Undecodable rows, as the chunk markers record them."""
        return sorted(int(r) for m in self.markers().values() if m is not None for r in m.skipped)


class SplitReader(SplitChecks, FeatureArray):
    """One split of a store: ids, labels, the evaluation-view features, and its augmented views.

    Row access (``take``, ``read``) reads the evaluation view; :meth:`view` gives augmented view ``k``.
    """

    def __init__(self, layout: Layout, name: str, meta: SplitMeta):
        super().__init__(layout, name, meta)
        self.name, self.dir = name, layout.root / name
        self.complete = meta.complete

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(open_array(self.dir / "labels", mode="r")[:], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in open_array(self.dir / "ids", mode="r")[:].tolist()]

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


class Store(StoreChecks):
    """A store opened read-only.

    Raises:
        StoreError: no store at ``path``, not a featcache store, or of a format version this featcache cannot read.
    """

    def __init__(self, path: Path | RemotePath):
        self.path = location(path, "store path")
        if not (self.path / "zarr.json").exists():
            if isinstance(self.path, RemotePath):
                self.path.check_bucket()
            raise StoreError(f"no feature store at {self.path}; run `featcache extract` first or check the path")
        try:
            group = open_group(self.path, mode="r")
        except FeatcacheError:
            raise
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

    def split_meta(self, name: str) -> SplitMeta:
        """The split's metadata as written.

        Raises:
            StoreError: no such split (the present ones are listed), or it has no metadata.
        """
        if name not in self.splits:
            self.refuse_if_being_written()
            raise StoreError(f"store {self.path} has no split '{name}' (it has: {', '.join(self.splits) or 'none'})")
        try:
            doc = open_group(self.path / name, mode="r").attrs.get("featcache_split")
        except FeatcacheError:
            raise
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


def open_store(path: str | os.PathLike | RemotePath) -> Store:
    """Open a store read-only (see :class:`Store`); ``path`` may be an object-store URL (``s3://...``)."""
    return Store(location(path, "store path"))
