"""Writing stores: create, resume, write whole chunks, add views, mark complete (see :mod:`featcache.store`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError, StoreIncompleteError, StoreLockedError, StoreMismatchError
from ._format import (
    FORMAT_VERSION,
    FP16_MAX,
    Layout,
    check_version,
    chunk_rows_for,
    disk_errors,
    ensure_groups,
    fsync,
    fsync_tree,
    group_doc,
    remove_partials,
    rmtree,
    sha256_ids,
    sha256_labels,
    write_json_atomic,
)
from ._lock import StoreLock, describe_lock
from ._reader import FeatureArray
from ._schema import ChunkMarker, Provenance, SplitMeta, ViewsMeta, identity_diff, parse

SHARD_WAIT = 300.0  # seconds a shard waits for another shard's short hold of the store lock


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


class StoreWriter:
    """Creates a store, or reopens an incomplete one to resume it; holds the store's lock.

    Args:
        path: the ``.zarr`` directory.
        provenance: the store's identity; ``format_version``, ``created_at`` and ``splits`` are the store's.
        overwrite: delete an existing store (after taking its lock) and start over.

    Raises:
        StoreLockedError: another live process writes this store.
        StoreMismatchError: the store exists with another identity (lists the differing keys).
        StoreError: the store exists but is not a featcache store, or is of another format version; or the
            filesystem refused a write (disk full, unwritable cache directory).
    """

    def __init__(
        self,
        path: Path,
        provenance: Provenance,
        *,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
        wait: float = SHARD_WAIT,
    ):
        self.path = Path(path)
        self.layout = Layout(self.path)
        self.shard, self.wait = shard, wait
        self.main = StoreLock(self.layout.lock, f"store {self.path}")
        # chunk markers are committed under ``lock``: the store's lock, or a shard's own lock
        self.lock = self.main if shard is None else StoreLock(self.layout.shard_lock(*shard), self._shard_name())
        if shard is not None and overwrite:
            raise StoreError(f"{self._shard_name()}: --overwrite cannot be combined with --shard; overwrite the "
                             "store once without --shard, then run the shards")  # fmt: skip
        with disk_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            with disk_errors(self.path), self.exclusive():
                if shard is None:  # before touching anything: a live shard's files are its own
                    self._refuse_live_shards()
                self._open(provenance, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _shard_name(self) -> str:
        return f"shard {self.shard[0]}/{self.shard[1]} of store {self.path}"

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the store's own lock for the body: what creates or changes metadata (splits, views, ``complete``).

        A plain writer holds it throughout; a shard takes it for such sections only (waiting up to ``wait``
        seconds for another shard's), and writes its chunks under its shard lock.
        """
        if self.shard is None:
            yield
            return
        with disk_errors(self.path):
            self.main.acquire(wait=self.wait)
        try:
            yield
        finally:
            self.main.release()

    def _live_shards(self) -> list[tuple[Path, dict]]:
        """The shard locks of other live writers (this writer's own aside), with their holders."""
        found = []
        for path in self.layout.shard_locks():
            holder = describe_lock(path)
            if holder is not None and not holder["stale"] and path != self.lock.path:
                found.append((path, holder))
        return found

    def _refuse_live_shards(self) -> None:
        for path, holder in self._live_shards():
            raise StoreLockedError(
                f"store {self.path} is being written by {path.name.removeprefix('lock-')} ({holder['text']}); "
                "wait for the shards to finish, then rerun without --shard to fill what is missing"
            )

    def _open(self, provenance: Provenance, overwrite: bool) -> None:
        meta = self.path / "zarr.json"
        if overwrite and meta.exists():
            meta.unlink()  # first: a kill from here on leaves debris that the next open removes
            fsync(self.path)
        if not meta.exists():
            self._remove_debris()
            self.prov = dataclasses.replace(provenance, format_version=FORMAT_VERSION, created_at=_now(), splits=())
            self.group = zarr.create_group(self.path, attributes={"featcache": self.prov.to_dict()})
            ensure_groups(self.path, self.layout.books)
        else:
            self.group = zarr.open_group(self.path, mode="r+")
            doc = self.group.attrs.get("featcache")
            if not isinstance(doc, dict):
                raise StoreError(f"{self.path} exists but is not a featcache store; pick another --store-name")
            version = check_version(self.path, doc)
            if version != FORMAT_VERSION:
                raise StoreError(
                    f"store {self.path} is in format v{version}, which this featcache reads but does not extend; "
                    f"pass --overwrite to write it again in v{FORMAT_VERSION}, or --store-name for a new store"
                )
            old = parse(Provenance, doc, f"{self.path}: provenance")
            diff = identity_diff(old.identity(), provenance.identity())
            if diff:
                raise StoreMismatchError(
                    f"store {self.path} exists with different {', '.join(diff)}; pass --store-name to write a "
                    "new store, or --overwrite to replace it"
                )
            self.prov = old
            # Temp files are removed only with no other live writer: another shard (another torchrun rank)
            # may be between writing a chunk's temp file and renaming it into place.
            if not self._live_shards():
                remove_partials(self.path)
        fsync(self.path)

    def _remove_debris(self) -> None:
        # No root zarr.json: anything here but the lock was left by a killed create or --overwrite.
        if (self.path / ".zgroup").exists() or (self.path / ".zarray").exists():
            raise StoreError(f"{self.path} is a zarr v2 store, not a featcache store; pick another --store-name")
        for child in self.path.iterdir():
            if child.name != self.layout.books.name:
                rmtree(child)
        for child in self.layout.books.iterdir():
            if not child.name.startswith(self.layout.lock.name):
                rmtree(child)

    def forget_verdict(self) -> None:
        """Remove the last ``featcache verify`` verdict: it judged what the store held before this writer."""
        with disk_errors(self.path):
            if self.layout.verdict().exists():
                rmtree(self.layout.verdict().parent)

    def set_provenance(self, prov: Provenance) -> None:
        self.prov = prov
        self.group.attrs["featcache"] = prov.to_dict()
        fsync(self.path / "zarr.json")

    def split(
        self, data: SplitData, dim: int, dtype: str, *, chunk_rows: int | None = None, compression: str = "none"
    ) -> SplitWriter:
        """Create the split (writing ids and labels whole) or reopen it for resuming.

        ``chunk_rows`` (default: about CHUNK_BYTES per chunk) applies to a new split only, capped at its row count.
        """
        rows = len(data.ids)
        chunk_rows = max(1, min(chunk_rows, rows)) if chunk_rows else chunk_rows_for(dim, dtype, rows)
        return SplitWriter(self, data, dim, dtype, chunk_rows, compression)

    def close(self) -> None:
        self.lock.release()
        if self.lock is not self.main:
            self.main.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
            array = self.split.group["features" if self.view is None else "views"]
            if self.view is None:
                array[start:stop] = block
            else:
                array[self.view, start:stop] = block
            path = self.chunk_file(i)
            fsync(path)
            fsync(path.parent)  # zarr renamed the file into place: make the name durable too
            if meta.compression == "none":
                back = np.fromfile(path, dtype=block.dtype, count=block.size)
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
                self.group = zarr.open_group(self.dir, mode="r+")
            else:
                self.meta = want
                self.group = self._create(data, compression)
            self._list_in_store()

    def _created_meta(self) -> SplitMeta | None:
        """The split's metadata if it was created to the end (step 2 of the write order), else None."""
        if not (self.dir / "zarr.json").exists():
            return None
        doc = zarr.open_group(self.dir, mode="r").attrs.get("featcache_split")
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
            config={"write_empty_chunks": True},
        )
        rows = max(m.rows, 1)
        labels = np.asarray(data.labels, dtype="<i8")
        group.create_array("labels", data=labels, chunks=(rows,), dimension_names=("row",))
        ids = group.create_array("ids", shape=(m.rows,), dtype=str, chunks=(rows,), dimension_names=("row",))
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
        doc = zarr.open_group(self.store.path, mode="r").attrs.get("featcache")
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
                    config={"write_empty_chunks": True},
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
            completed_at=self.meta.completed_at or _now(),
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
