"""Writing a store's splits: create or resume one, write whole chunks, add views, mark it complete.

The store itself (creation, lock, shards) is :class:`~featcache.store._store_writer.StoreWriter`'s; see
:mod:`featcache.store` for the layout and the write order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..errors import StoreError, StoreIncompleteError, StoreMismatchError
from ._format import (
    CHUNK_KEY_ENCODING,
    FP16_MAX,
    disk_errors,
    ensure_groups,
    fsync,
    fsync_tree,
    group_doc,
    now,
    open_group,
    read_chunk_bytes,
    rmtree,
    sha256_ids,
    sha256_labels,
    write_json_atomic,
)
from ._reader import FeatureArray
from ._schema import ChunkMarker, Provenance, SplitMeta, ViewsMeta, parse

if TYPE_CHECKING:
    from ._store_writer import StoreWriter

__all__ = ["ArrayWriter", "SplitData", "SplitWriter", "planned_meta"]


@dataclass(frozen=True)
class SplitData:
    """What a writer knows about a split before any feature is computed."""

    name: str
    ids: Sequence[str]
    labels: np.ndarray
    fingerprint: str
    classes: Sequence[str]


def planned_meta(data: SplitData, dim: int, dtype: str, chunk_rows: int, compression: str) -> SplitMeta:
    """The metadata a new split of ``data`` gets (not complete, no views)."""
    rows = len(data.ids)
    return SplitMeta(
        rows=rows,
        dim=int(dim),
        dtype=str(np.dtype(dtype)),
        chunk_rows=int(chunk_rows),
        n_chunks=-(-rows // chunk_rows),
        compression=compression,
        fingerprint=data.fingerprint,
        ids_sha256=sha256_ids(data.ids),
        labels_sha256=sha256_labels(data.labels),
        classes=tuple(data.classes),
    )


class ArrayWriter:
    """Writes whole chunks of one array of a split: the evaluation view (``view`` None) or view ``view``."""

    split: SplitWriter
    view: int | None

    def __init__(self, split: SplitWriter, view: int | None):
        self.split, self.view = split, view
        self.store, self.layout, self.name = split.store, split.layout, split.name

    @property
    def label(self) -> str:
        return "features" if self.view is None else f"view {self.view}"

    @property
    def rows(self) -> int:
        return self.split.meta.rows

    @property
    def chunk_rows(self) -> int:
        return self.split.meta.chunk_rows

    @property
    def n_chunks(self) -> int:
        return self.split.meta.n_chunks

    @property
    def complete(self) -> bool:
        # a view counted complete in a split that is not (being repaired or resumed) is checked chunk by chunk
        m = self.split.meta
        return m.complete and (self.view is None or self.view < m.n_views)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.rows)

    def chunk_file(self, i: int) -> Path:
        return self.layout.chunk_file(self.name, self.view, i)

    def done(self, i: int) -> bool:
        return self.layout.marker(self.name, self.view, i).exists()

    def pending(self) -> list[int]:
        """Chunks that still have to be written (all of them for a fresh array)."""
        return [] if self.complete else [i for i in range(self.n_chunks) if not self.done(i)]

    def write_chunk(self, i: int, block: np.ndarray, skipped: Sequence[int] = ()) -> None:
        """Write chunk ``i`` whole, fsync it, read it back, then mark it done.

        Args:
            block: (rows of chunk i, dim) features, any float dtype; cast to the store dtype.
            skipped: absolute row indices in this chunk whose image could not be read.

        Raises:
            StoreError: wrong shape, NaN/Inf, values that overflow float16, or the disk refused the write.
            StoreLockedError: this process no longer holds the store's lock.
        """
        meta = self.split.meta
        start, stop = self.bounds(i)
        where = f"{self.split.dir} ({self.label})"
        if block.shape != (stop - start, meta.dim):
            raise StoreError(f"chunk {i} of {where}: got shape {block.shape}, want {(stop - start, meta.dim)}")
        if not np.isfinite(block).all():
            raise StoreError(f"features of rows {start}-{stop} of {where} contain NaN or Inf; check the checkpoint")
        dtype = np.dtype(meta.dtype)
        if dtype == np.float16 and block.size and np.abs(block).max() > FP16_MAX:
            raise StoreError(
                f"features of rows {start}-{stop} reach {np.abs(block).max():.4g}, beyond float16's "
                f"{FP16_MAX:.0f}; rerun with --dtype float32 --overwrite"
            )
        block = np.ascontiguousarray(block, dtype=dtype.newbyteorder("<"))
        digest = hashlib.sha256(block.tobytes()).hexdigest()
        with disk_errors(self.store.path):
            # zarr skips a chunk that is all fill value (zeros: every image of it skipped) unless told to write
            # it, and the config is the handle's, not the array's: ask on every write
            name = "features" if self.view is None else "views"
            array = self.split.group[name].with_config({"write_empty_chunks": True})
            if self.view is None:
                array[start:stop] = block
            else:
                array[self.view, start:stop] = block
            path = self.chunk_file(i)
            fsync(path)
            fsync(path.parent)  # zarr renamed the file into place: make the name durable too
            if meta.compression == "none":
                back = read_chunk_bytes(path, block.dtype, block.size)
            else:
                back = np.ascontiguousarray(array[start:stop] if self.view is None else array[self.view, start:stop])
            if hashlib.sha256(back.tobytes()).hexdigest() != digest:
                raise StoreError(f"chunk {i} of {where} read back differently from what was written; check the disk")
            self.store.lock.check()  # a writer that lost its lock must not mark chunks as its own
            marker = self.layout.marker(self.name, self.view, i)
            marker.parent.mkdir(exist_ok=True)
            mark = ChunkMarker(stop - start, digest, tuple(sorted(int(r) for r in skipped)))
            write_json_atomic(marker, group_doc({"featcache_chunk": mark.to_dict()}))


class SplitWriter(ArrayWriter):
    """One split of a store being written; as an :class:`ArrayWriter` it writes the evaluation-view features,
    and :meth:`views` gives writers of its augmented views.

    Raises (every method):
        StoreError: the filesystem refused a write (disk full, read-only, ...); the store stays resumable.
    """

    def __init__(self, store: StoreWriter, data: SplitData, dim: int, dtype: str, chunk_rows: int, compression: str):
        self.split, self.view = self, None
        self.store, self.name, self.layout = store, data.name, store.layout
        self.dir = store.path / data.name
        want = planned_meta(data, dim, dtype, chunk_rows, compression)
        with disk_errors(store.path):
            old = self._created_meta()
            if old is not None:
                diff = old.content_diff(want)
                if diff:
                    raise StoreMismatchError(
                        f"split '{self.name}' of store {store.path} was started with different {', '.join(diff)}; "
                        "pass --overwrite to start over"
                    )
                self.meta = old
                self.group = open_group(self.dir, mode="r+")
            else:
                self.meta = want
                self.group = self._create(data, compression)
            self._list_in_store()

    def _created_meta(self) -> SplitMeta | None:
        """The split's metadata if it was created to the end (step 2 of the write order), else None."""
        if not (self.dir / "zarr.json").exists():
            return None
        doc = open_group(self.dir, mode="r").attrs.get("featcache_split")
        return parse(SplitMeta, doc, f"{self.dir}: split metadata") if isinstance(doc, dict) else None

    def _create(self, data: SplitData, compression: str) -> zarr.Group:
        # A directory here is a creation that was killed: nothing in it is final, and no chunk
        # was written (chunks are only written once the split exists), so start it again.
        if self.dir.exists():
            rmtree(self.dir)
        books = self.layout.books / self.name
        if books.exists():
            rmtree(books)
        m = self.meta
        group = self.store.group.create_group(data.name)
        group.create_array(
            "features",
            shape=(m.rows, m.dim),
            chunks=(m.chunk_rows, m.dim),
            dtype=m.dtype,
            compressors=_compressors(compression),
            fill_value=0,
            dimension_names=("row", "feature"),
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        rows = max(m.rows, 1)
        labels = np.asarray(data.labels, dtype="<i8")
        one_chunk = {"chunks": (rows,), "dimension_names": ("row",), "chunk_key_encoding": CHUNK_KEY_ENCODING}
        group.create_array("labels", data=labels, **one_chunk)
        ids = group.create_array("ids", shape=(m.rows,), dtype=str, **one_chunk)
        ids[:] = np.asarray(list(data.ids), dtype=str)
        fsync_tree(self.dir)
        ensure_groups(self.store.path, self.layout.marker_dir(self.name, None))
        # the attrs make the split exist: written after its arrays are on disk
        self._write_meta(m, group)
        return group

    def _write_meta(self, meta: SplitMeta, group: zarr.Group | None = None) -> None:
        (group or self.group).attrs["featcache_split"] = meta.to_dict()
        fsync(self.dir / "zarr.json")
        fsync(self.dir)
        self.meta = meta

    def _list_in_store(self) -> None:
        # read again: another shard may have listed a split since this writer opened the store
        doc = open_group(self.store.path, mode="r").attrs.get("featcache")
        self.store.prov = prov = parse(Provenance, doc, f"{self.store.path}: provenance")
        if self.name not in prov.splits:
            self.store.set_provenance(dataclasses.replace(prov, splits=(*prov.splits, self.name)))

    def views(self, count: int, seed: int, augment: dict[str, Any]) -> list[ArrayWriter]:
        """Writers of views 0..count-1, allocating the new ones; complete views have nothing pending.

        Raises:
            StoreMismatchError: the split's views were made with another seed or augmentation.
        """
        have = self.meta.views
        if have is not None and (have.seed != seed or have.augment != augment):
            what = "seed" if have.seed != seed else "augmentation"
            raise StoreMismatchError(
                f"split '{self.name}' of store {self.store.path} holds views made with another {what} "
                f"(seed {have.seed}, {have.augment}); pass --views-seed {have.seed} to add to them, or --overwrite"
            )
        with disk_errors(self.store.path):
            if have is None:  # seed and augmentation first: a resumed run must make the same crops
                self._write_meta(dataclasses.replace(self.meta, views=ViewsMeta(seed, dict(augment), 0)))
            m = self.meta
            if "views" not in self.group:
                self.group.create_array(
                    "views",
                    shape=(count, m.rows, m.dim),
                    chunks=(1, m.chunk_rows, m.dim),
                    dtype=m.dtype,
                    compressors=_compressors(m.compression),
                    fill_value=0,
                    dimension_names=("view", "row", "feature"),
                    chunk_key_encoding=CHUNK_KEY_ENCODING,
                )
            elif self.group["views"].shape[0] < count:
                self.group["views"].resize((count, m.rows, m.dim))
            for k in range(m.n_views, count):
                ensure_groups(self.store.path, self.layout.marker_dir(self.name, k))
        return [ArrayWriter(self, k) for k in range(count)]

    def invalidate(self, view: int | None, chunks: Sequence[int]) -> None:
        """Forget ``chunks`` of an array (they failed verification), so that the next extract redoes them.

        The split is marked incomplete first and keeps its views count: a store is never made smaller, and a
        repair killed half way leaves a store that readers refuse and the next extract finishes.
        """
        with disk_errors(self.store.path):
            if self.meta.complete:
                self._write_meta(dataclasses.replace(self.meta, complete=False))
            for i in chunks:
                marker = self.layout.marker(self.name, view, i)
                if marker.exists():
                    rmtree(marker.parent)

    def finalize(self, views: int = 0) -> None:
        """Mark the split complete (and views 0..views-1) once every chunk has its marker and file.

        Raises:
            StoreIncompleteError: some chunks are not written yet (their indices are listed).
            StoreError: a chunk file is missing or of the wrong size, or the disk refused the write.
        """
        arrays = [self, *(ArrayWriter(self, k) for k in range(max(self.meta.n_views, views)))]
        for a in arrays:
            missing = [i for i in range(self.n_chunks) if not a.done(i)]
            if missing:
                raise StoreIncompleteError(
                    f"split '{self.name}' of {self.store.path} misses chunks {missing[:10]} of its {a.label}"
                )
        for a in arrays:
            problems = FeatureArray(self.layout, self.name, self.meta, a.view).cheap_problems()
            if problems:
                raise StoreError(f"split '{self.name}' of {self.store.path}: {problems[0]}")
        reader = FeatureArray(self.layout, self.name, self.meta)
        self.store.main.check()
        meta = dataclasses.replace(
            self.meta,
            complete=True,
            completed_at=self.meta.completed_at or now(),
            skipped_rows=tuple(reader.skipped()),
        )
        changed = not self.meta.complete or views > meta.n_views
        if views > meta.n_views:
            meta = dataclasses.replace(meta, views=dataclasses.replace(meta.views, count=views))
        with disk_errors(self.store.path):
            # the flag goes last: zarr renames zarr.json into place; fsync it and its directory
            self._write_meta(meta)
        if changed:  # a verdict on what was there before is obsolete
            self.store.forget_verdict()


def _compressors(compression: str) -> list | None:
    return None if compression == "none" else [zarr.codecs.ZstdCodec(level=3)]
